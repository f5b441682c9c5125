#!/usr/bin/env bash
# The chart README from README.md.gotmpl and values.yaml's `# --` comments (helm-docs), the one invocation that both
# `make chart-docs` (writes README.md) and the drift test in tests/chart (--dry-run: prints it) use.
#   usage: chart-docs.sh CHART_DIR [--dry-run]
# helm-docs' own --documentation-strict-mode is not used: v1.14.2 counts only `# key -- text` comments there (it
# listed all 83 keys of values.yaml as undocumented) and exits 0 anyway; tests/chart checks the table's
# descriptions instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
chart="${1:?usage: chart-docs.sh CHART_DIR [--dry-run]}"; shift
exec "${HELM_DOCS:-$ROOT/.cache/bin/helm-docs}" --chart-search-root "$chart" --template-files README.md.gotmpl \
  --sort-values-order file --log-level warning "$@"

"""Render TextGenService YAML files into the RayService the operator would apply (offline, no cluster).

    python -m textgen_operator.render manifests/samples/fixed.yaml            # to stdout
    python -m textgen_operator.render --out-dir tests/operator/golden manifests/samples/*.yaml

With --out-dir, each FILE.yaml becomes OUT_DIR/FILE.rayservice.yaml (`make golden` regenerates the goldens so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .builder import build_rayservice


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # serveConfigV2 reads as the YAML it is
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def render_file(path: Path, namespace: str = "default") -> str:
    tgs = yaml.safe_load(path.read_text())
    meta = tgs["metadata"]
    rs = build_rayservice(meta["name"], meta.get("namespace", namespace), tgs.get("spec") or {})
    return f"# Generated from {path.name} by `python -m textgen_operator.render` (make golden). Do not edit.\n" + \
        to_yaml(rs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m textgen_operator.render", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--namespace", default="default", help="namespace for files that name none")
    p.add_argument("--out-dir", type=Path, help="write FILE.rayservice.yaml here instead of stdout")
    args = p.parse_args(argv)
    for f in args.files:
        text = render_file(f, args.namespace)
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            (args.out_dir / f"{f.stem}.rayservice.yaml").write_text(text)
        else:
            sys.stdout.write(text if len(args.files) == 1 else "---\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

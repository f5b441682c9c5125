"""`python -m textgen_operator` (also the `textgen-operator` script): kopf's own `run`, preset for this operator.

    python -m textgen_operator --namespace demo          # one namespace (repeatable)
    python -m textgen_operator --all-namespaces          # cluster-wide (the default when no namespace is given)
    python -m textgen_operator --log-format json -v      # structured logs
    python -m textgen_operator --metrics-port 0          # no Prometheus endpoint (default: :8081/metrics)
    python -m textgen_operator --metrics-host 127.0.0.1  # metrics on loopback only (`make run-operator`)

Equivalent to `kopf run --standalone --liveness=... -m textgen_operator.handlers ...`, plus the operator's
Prometheus metrics (metrics.py), which only this entry point serves. The kubeconfig comes from
the in-cluster service account, else $KUBECONFIG, else ~/.kube/config. `$WATCH_NAMESPACE` (comma-separated) is
read when no --namespace is given.
"""

from __future__ import annotations

import argparse
import os
import sys

from .constants import METRICS_PORT

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_METRICS_HOST = "0.0.0.0"


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="textgen-operator", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch this namespace (repeatable, or comma-separated)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    p.add_argument("-L", "--liveness", default=os.environ.get("TEXTGEN_LIVENESS", DEFAULT_LIVENESS),
                   help=f"liveness endpoint (default {DEFAULT_LIVENESS}); 'none' to disable")
    p.add_argument("--log-format", choices=["plain", "full", "json"], default=os.environ.get("TEXTGEN_LOG_FORMAT",
                                                                                            "full"))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("TEXTGEN_METRICS_PORT", METRICS_PORT)),
                   help=f"port of the Prometheus endpoint /metrics (default {METRICS_PORT}); 0 disables")
    p.add_argument("--metrics-host", default=os.environ.get("TEXTGEN_METRICS_HOST", DEFAULT_METRICS_HOST),
                   help=f"address the Prometheus endpoint binds (default {DEFAULT_METRICS_HOST}, what a pod needs for "
                        "scraping; 127.0.0.1 keeps it on the machine)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-d", "--debug", action="store_true")
    args = p.parse_args(argv)
    if args.all_namespaces and args.namespace:
        p.error("--all-namespaces and --namespace exclude each other")
    if not 0 <= args.metrics_port <= 65535:
        p.error(f"--metrics-port {args.metrics_port}: not a port")
    return args


def kopf_args(argv: list[str] | None = None) -> list[str]:
    return kopf_command(options(argv))


def kopf_command(args: argparse.Namespace) -> list[str]:
    """kopf's `run` command line for our options (the metrics port is ours, not kopf's)."""
    given = args.namespace or [os.environ.get("WATCH_NAMESPACE", "")]
    namespaces = [n.strip() for value in given for n in value.split(",") if n.strip()]  # "a,b" works too
    out = ["run", "--standalone", "--log-format", args.log_format]
    if args.liveness.lower() != "none":
        out += ["--liveness", args.liveness]
    if args.verbose:
        out.append("--verbose")
    if args.debug:
        out.append("--debug")
    if namespaces and not args.all_namespaces:
        for ns in namespaces:
            out += ["--namespace", ns]
    else:
        out.append("--all-namespaces")
    out += ["-m", "textgen_operator.handlers"]
    return out


def main(argv: list[str] | None = None) -> int:
    from kopf.cli import main as kopf_main

    from . import metrics

    args = options(argv)
    # Before kopf: a port in use stops the operator here, with its error.
    metrics.serve(args.metrics_port, args.metrics_host)
    return kopf_main(args=kopf_command(args), prog_name="textgen-operator", standalone_mode=True) or 0


if __name__ == "__main__":
    sys.exit(main())

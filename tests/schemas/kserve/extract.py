"""Extract the schemas tests/test_deploy_kubernetes.py checks KServe resources against, from a KServe
checkout.

    python tests/schemas/kserve/extract.py /path/to/kserve   # writes the *.json.gz beside this file

Each file is the ``openAPIV3Schema`` of one served version of a CRD in ``config/crd/full/``, descriptions
removed (KServe is Apache-2.0 licensed, as torchgate).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {
    "servingruntimes.v1alpha1.json.gz": ("serving.kserve.io_servingruntimes.yaml", "v1alpha1"),
    "inferenceservices.v1beta1.json.gz": ("serving.kserve.io_inferenceservices.yaml", "v1beta1"),
}


def strip(node: Any) -> Any:
    """Drop every ``description`` (the bulk of the file) and keep the rest as it is."""
    if isinstance(node, dict):
        return {key: strip(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [strip(value) for value in node]
    return node


def main(checkout: Path) -> None:
    for out, (name, version) in CRDS.items():
        crd = yaml.safe_load((checkout / "config" / "crd" / "full" / name).read_text())
        served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
        schema = strip(served["schema"]["openAPIV3Schema"])
        data = json.dumps(schema, separators=(",", ":"), sort_keys=True).encode()
        (HERE / out).write_bytes(gzip.compress(data, mtime=0))
        print(f"{out}: {len(data)} bytes of JSON")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Regenerates the schemas the manifest test validates against, from KubeRay's CRDs:
    python deploy/kuberay/crds/update.py PATH/ray.io_rayclusters.yaml PATH/ray.io_rayjobs.yaml
(the files are in KubeRay's repository under helm-chart/kuberay-operator/crds/). Keeps the v1 OpenAPI schema,
without descriptions and CEL rules (which need a Kubernetes API server to evaluate), gzipped."""

import gzip
import json
import sys
from pathlib import Path

import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "x-kubernetes-validations")}
    if isinstance(node, list):
        return [strip(x) for x in node]
    return node


for src in sys.argv[1:]:
    crd = yaml.safe_load(Path(src).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    out = Path(__file__).parent / f"{crd['spec']['names']['kind']}.v1.schema.json.gz"
    raw = json.dumps(strip(v1["schema"]["openAPIV3Schema"]), sort_keys=True, separators=(",", ":")).encode()
    out.write_bytes(gzip.compress(raw, 9, mtime=0))
    print(f"wrote {out}")

"""Prometheus on the multi-host harness's head host, as test_multihost.py checks it: its API asked on the head,
and the dashboard's queries, the alert rules and the scrape targets checked against a real job."""

import importlib.util
import json
import time
import urllib.parse

from tests.conftest import ROOT
from toy.hosts import Cluster


def prom_on(c: Cluster, port: int, path: str, **params) -> dict:
    """Prometheus's API, asked on the head host (it listens on that host's loopback)."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    r = c.run(
        "head",
        [
            "python",
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            url,
        ],
        c.ray_env(),
        timeout=60,
    )
    body = json.loads(r.stdout)
    assert body["status"] == "success", body
    return body["data"]


def check_prometheus(prom, run, wait_for) -> list:
    """The dashboard's variables resolved as Grafana does, then every panel query has a result; every alert rule
    has been evaluated without error; Ray's nodes are scraped through their service-discovery file."""
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy" / "monitoring" / "dashboard.py")
    dashboard_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard_py)
    run_id = json.loads((run.path / "control.json").read_text())["run_id"]

    def ready() -> bool:
        try:
            return run_id in prom("label/run_id/values", **{"match[]": "videop2r_run_info"})
        except RuntimeError:  # Prometheus not answering yet
            return False

    wait_for(ready, "Prometheus to scrape the exporter", timeout=120)
    instances = [s["instance"] for s in prom("series", **{"match[]": f'videop2r_run_info{{run_id="{run_id}"}}'})]
    dashboard = json.loads(dashboard_py.OUT.read_text())
    queries = [
        e.replace("$instance", "|".join(instances)).replace("$__rate_interval", "30s")
        for e in dashboard_py.queries(dashboard)
    ]
    empty = queries
    deadline = time.monotonic() + 120  # Ray's agents export the workers' metrics every few seconds
    while empty and time.monotonic() < deadline:
        empty = [q for q in empty if not prom("query", query=q)["result"]]
        time.sleep(2 if empty else 0)
    assert not empty, empty
    wait_for(
        lambda: all(
            r.get("lastEvaluation", "0001").startswith("20") for g in prom("rules")["groups"] for r in g["rules"]
        ),
        "the rules' evaluation",
        60,
    )
    rules = [r for g in prom("rules")["groups"] for r in g["rules"]]
    wanted = (ROOT / "deploy" / "monitoring" / "alerts.yml").read_text().count("- alert: ")  # every rule loaded
    assert len(rules) == wanted and all(r["health"] == "ok" for r in rules), rules
    targets = prom("targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == {"videop2r", "ray"}, targets  # both scraped
    return targets

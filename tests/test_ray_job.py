"""The demo launched as users launch it: `ray job submit` (deploy/submit.sh) to a Ray head started from the
project's environment. The head gets its own ports and process group, so it neither meets nor outlives the test
session's private cluster."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster.services import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head started by deploy/local-head.sh (its own ports and process group), stopped by it afterwards."""
    venv_bin = str(Path(sys.executable).parent)
    state = tmp_path_factory.mktemp("ray-head")
    # a stopped job gets SIGTERM, and SIGKILL only after this grace (long enough to write its checkpoint)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_JOB_STOP_WAIT_TIME_S": "60",
           "VIDEOP2R_HEAD_DIR": str(state), "RAY_GCS_PORT": str(free_port()), "RAY_NUM_CPUS": "6"}
    dash = free_port()
    ports = {"--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port()}
    script = str(ROOT / "deploy" / "local-head.sh")
    # the roles' custom resources, as deploy/kuberay's worker groups offer them (here all on the one node)
    pins = '--resources={"rollout": 2, "learner": 1, "reward": 1}'
    r = subprocess.run([script, "start", str(dash), "--", pins] + [f"{k}={v}" for k, v in ports.items()], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and f"RAY_ADDRESS=http://127.0.0.1:{dash}" in r.stdout, r.stdout + r.stderr
    again = subprocess.run([script, "start", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "run" in again.stderr and "stop" in again.stderr  # one head per state folder
    yield f"http://127.0.0.1:{dash}", env
    subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)


def test_train_as_a_ray_job_is_watched_scales_and_stops_cleanly(ray_head, tiny_model_dir, synthetic_dir, tmp_path):
    """`train` submitted with deploy/submit.sh: its relative run folder lands under --out-root, a secret reaches
    it only through the runtime environment, a real Prometheus (deploy/monitoring/prometheus.sh) scrapes it and
    Ray, every dashboard query returns data and every alert rule evaluates; `videop2r scale` reaches it through
    Redis (1 -> 2 workers, the new one serving after it got the weights), and `ray job stop` (SIGTERM) makes it
    checkpoint and exit cleanly."""
    from cluster.run_dir import RunDir

    address, env = ray_head
    secret = "sekrit-" + os.urandom(4).hex()
    env = {**env, "RAY_ADDRESS": address, "RAY": f"{Path(sys.executable).parent}/ray",
           "VIDEOP2R_JUDGE_API_KEY": secret}
    out_root, metrics_port = tmp_path / "outputs", free_port()
    r = subprocess.run(
        [str(ROOT / "deploy" / "submit.sh"), "--out-root", str(out_root), "--no-wait", "--", "train",
         "--config", "configs/demo.yaml", "run.out_dir=job-run", f"model.path={tiny_model_dir}",
         f"data.dir={synthetic_dir}", "rollout.group_size=2", "rollout.max_tokens=8", "trainer.prompts_per_step=2",
         "trainer.steps=100000", "trainer.checkpoint_every=0", "rollout.num_cpus=1", "learner.num_cpus=1",
         f"metrics.port={metrics_port}", "rollout.resources.rollout=1", "learner.resources.learner=1",
         "reward.resources.reward=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    found = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr)
    assert found, (r.stdout + r.stderr)[-3000:]
    job = found.group(0)
    out = out_root / "job-run"
    run = RunDir(out)
    prom_port = free_port()
    prom = subprocess.Popen([str(ROOT / "deploy" / "monitoring" / "prometheus.sh"), "--driver",
                             f"127.0.0.1:{metrics_port}", "--port", str(prom_port), "--interval", "1s",
                             "--data", str(tmp_path / "prometheus")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_for(pred, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + _logs(job, env)
            time.sleep(1)

    try:
        wait_for(lambda: run.metrics(), "the first step")
        listed = subprocess.run([env["RAY"], "job", "list", "--address", address], env={**env, "RAY_AUTH_MODE": "token"},
                                capture_output=True, text=True, timeout=60)
        # the secret is in the job's runtime environment (the dashboard redacts those values in a browser; the job
        # API shows them to token holders), never in its entrypoint
        entrypoints = re.findall(r"entrypoint='([^']*)'", listed.stdout)
        assert any("cluster.cli train" in e for e in entrypoints) and not any(secret in e for e in entrypoints)
        assert f"'VIDEOP2R_JUDGE_API_KEY': '{secret}'" in listed.stdout
        wait_for(lambda: len(run.metrics()) >= 3, "three steps")
        _check_prometheus(prom_port, run, wait_for)
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(timeout=30)
    scaled = subprocess.run([str(Path(sys.executable).parent / "videop2r"), "scale", "--run", str(out),
                             "--rollout-workers", "2"], capture_output=True, text=True, timeout=60)
    assert scaled.returncode == 0 and "-> 2" in scaled.stdout, scaled.stderr
    wait_for(lambda: run.metrics()[-1]["rollout_workers_ready"] == 2, "the second worker")
    wait_for(lambda: len({x["worker"] for x in run.read_rollouts()[-4:]}) == 2, "both workers serving")
    status = subprocess.run([env["RAY"], "status", "--address", f"127.0.0.1:{env['RAY_GCS_PORT']}"],
                            env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=60)
    for used in ("2.0/2.0 rollout", "1.0/1.0 learner", "1.0/1.0 reward"):  # each role took its pinned resource
        assert used in status.stdout, status.stdout + status.stderr
    stop = subprocess.run([env["RAY"], "job", "stop", "--address", address, job], env={**env, "RAY_AUTH_MODE": "token"},
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    logs = _logs(job, env)
    assert "resume with the same command" in logs, logs[-3000:]
    last = run.metrics()[-1]["step"]
    assert run.latest_checkpoint().name == f"step_{last:06d}"  # checkpointed at the step it stopped after
    assert not (ROOT / "job-run").exists()


def _prom(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def _check_prometheus(port: int, run, wait_for) -> None:
    """The dashboard's variables resolved as Grafana does, then every panel query has a result; every alert rule
    has been evaluated without error; Ray's nodes are scraped through their service-discovery file."""
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy" / "monitoring" / "dashboard.py")
    dashboard_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard_py)
    run_id = json.loads((run.path / "control.json").read_text())["run_id"]

    def ready() -> bool:
        try:
            return run_id in _prom(port, "label/run_id/values", **{"match[]": "videop2r_run_info"})
        except OSError:
            return False

    wait_for(ready, "Prometheus to scrape the exporter", timeout=120)
    instances = [s["instance"] for s in _prom(port, "series", **{"match[]": f'videop2r_run_info{{run_id="{run_id}"}}'})]
    dashboard = json.loads(dashboard_py.OUT.read_text())
    queries = [e.replace("$instance", "|".join(instances)).replace("$__rate_interval", "30s")
               for e in dashboard_py.queries(dashboard)]
    empty = queries
    deadline = time.monotonic() + 120  # Ray's agents export the workers' metrics every few seconds
    while empty and time.monotonic() < deadline:
        empty = [q for q in empty if not _prom(port, "query", query=q)["result"]]
        time.sleep(2 if empty else 0)
    assert not empty, empty
    wait_for(lambda: all(r.get("lastEvaluation", "0001").startswith("20")
                         for g in _prom(port, "rules")["groups"] for r in g["rules"]), "the rules' evaluation", 60)
    rules = [r for g in _prom(port, "rules")["groups"] for r in g["rules"]]
    assert len(rules) == 5 and all(r["health"] == "ok" for r in rules), rules
    targets = _prom(port, "targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == {"videop2r", "ray"}, targets  # both scraped


def _logs(job, env):
    r = subprocess.run([env["RAY"], "job", "logs", "--address", env["RAY_ADDRESS"], job],
                       env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr

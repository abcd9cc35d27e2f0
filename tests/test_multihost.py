"""The run across hosts (tests/hosts_harness.py): `sft` then `train` submitted with deploy/submit.sh on the head
host of a Ray cluster across the harness's hosts."""

import importlib.util
import json
import re
import subprocess
import time
import urllib.parse

import pytest

from tests.conftest import ROOT
from tests.hosts_harness import PINS, SECRET, job_logs, placement, submit
from toy.hosts import Cluster

pytestmark = pytest.mark.vllm

JUDGE_PORT, METRICS_PORT, PROMETHEUS_PORT = 8000, 9400, 9090


def test_sft_then_train_across_hosts(hosts, shared):
    """`sft` then `train` as Ray jobs across seven hosts: the learner world spans two hosts whose hostnames map to
    127.0.1.1; every step's weights reach the rollout host (mismatch KL < 1e-6); the reward host uses the judge and
    the Redis on the head (written, then hit); checkpoints and hf/ land on the shared folder only; the exporter is
    scraped from another host; `videop2r scale` on a learner host adds a worker on the spare rollout host that
    serves with the current weights; `ray job stop` checkpoints. A loopback judge, and a run folder only the head
    sees, are refused before anything starts (naming the setting, and every host that does not see the folder),
    and those jobs read as failed."""
    from cluster.run_dir import RunDir

    c = hosts
    judge = c.popen("head", ["python", "-m", "toy.judge_server", "--host", c.head.ip, "--port", str(JUDGE_PORT)],
                    c.ray_env(), stdout=open(c.state / "judge.log", "w"), stderr=subprocess.STDOUT)
    sft = submit(c, "sft", "--config", "configs/demo.yaml", "run.out_dir=sft", f"model.path={shared}/tiny-model",
                  f"data.dir={shared}/few", "sft.steps=4", "sft.batch_size=2", *PINS)
    assert "succeeded" in sft.stdout + sft.stderr, (sft.stdout + sft.stderr)[-3000:]
    sft_out = shared / "runs" / "sft"
    assert [r["step"] for r in RunDir(sft_out).metrics()] == [1, 2, 3, 4]  # a world across learn0 and learn1
    assert (sft_out / "hf" / "config.json").is_file()

    train = ["train", "--config", "configs/demo.yaml", f"model.path={shared}/sft-model", f"data.dir={shared}/few",
             "trainer.prompts_per_step=2", "rollout.group_size=2", "rollout.max_tokens=48", "rollout.temperature=0.01",
             "trainer.steps=100000", "trainer.checkpoint_every=2", "judge.backend=http", "judge.model=judge",
             "judge.allow_insecure_http=true", "cache.start_local=true", "metrics.host=0.0.0.0",
             f"metrics.port={METRICS_PORT}", *PINS]
    refused = submit(c, *train, "run.out_dir=refused", f"judge.base_url=http://127.0.0.1:{JUDGE_PORT}/v1")
    text = refused.stdout + refused.stderr
    assert "failed" in text and f"error: this cluster has {len(c.hosts)} nodes" in text and "judge.base_url" in text, text[-3000:]
    assert "Traceback" not in text and RunDir(shared / "runs" / "refused").metrics() == []
    # a run folder on the head host's own disk: the other hosts are named before anything starts
    private = submit(c, "sft", "--config", "configs/demo.yaml", "run.out_dir=/tmp/not-shared",
                      f"model.path={shared}/tiny-model", f"data.dir={shared}/few", "sft.steps=1", "sft.batch_size=2",
                      *PINS)
    text = private.stdout + private.stderr
    assert "failed" in text and "does not see run.out_dir /tmp/not-shared" in text, text[-3000:]
    assert all(f"{h.name} ({h.ip}) does not see" in text for h in c.hosts[1:]) and "head (" not in text, text[-3000:]
    assert "Traceback" not in text

    r = submit(c, *train, "run.out_dir=rl", f"judge.base_url=http://{c.head.ip}:{JUDGE_PORT}/v1", wait=False)
    found = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr)
    assert found, (r.stdout + r.stderr)[-3000:]
    job, run = found.group(0), RunDir(shared / "runs" / "rl")
    # a real Prometheus on the head host (deploy/monitoring/prometheus.sh): the driver's exporter and, through the
    # head's service-discovery file, every node's Ray metrics across the hosts
    prom = c.popen("head", [str(ROOT / "deploy" / "monitoring" / "prometheus.sh"), "--driver",
                            f"{c.head.ip}:{METRICS_PORT}", "--port", str(PROMETHEUS_PORT), "--interval", "1s"],
                   c.ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for(pred, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {job_logs(c, job)[-4000:]}"
            time.sleep(1)

    try:
        wait_for(lambda: len(run.metrics()) >= 4, "four steps")
        listed = c.run("head", ["ray", "job", "list", "--address", c.dashboard], c.ray_env(), timeout=60)
        # the secret is in the job's runtime environment (the job API shows it to token holders), never in its
        # entrypoint, which `ray job list` and the dashboard show
        entrypoints = re.findall(r"entrypoint='([^']*)'", listed.stdout)
        assert any("cluster.cli train" in e for e in entrypoints) and not any(SECRET in e for e in entrypoints)
        assert f"'VIDEOP2R_JUDGE_API_KEY': '{SECRET}'" in listed.stdout
        placed = placement(c)
        assert placed["LearnerRank"] == ["learn0", "learn1"] and placed["RewardScorer"][0].startswith("reward"), placed
        assert len(placed["RolloutWorker"]) == 1 and placed["RolloutWorker"][0].startswith("roll"), placed
        rows = run.metrics()
        assert all(r["sync_updated"] == r["rollout_workers_ready"] == 1 and r["mismatch_kl"] < 1e-6 for r in rows)
        totals = {k: sum(r.get(k, 0) for r in rows) for k in ("cache/writes", "cache/hits", "judge/ok")}
        assert totals["cache/writes"] > 0 and totals["cache/hits"] > 0 and totals["judge/ok"] > 0, totals
        assert not any(k in r for r in rows for k in ("cache/down", "judge/failed", "judge/timeout")), rows[-1]
        scraped = c.run("roll0", ["python", "-c", "import urllib.request; print(urllib.request.urlopen("
                                  f"'http://{c.head.ip}:{METRICS_PORT}/metrics', timeout=10).read().decode())"], c.ray_env())
        assert "videop2r_run_info" in scraped.stdout
        scale = c.run("learn0", ["videop2r", "scale", "--run", str(run.path), "--rollout-workers", "2"], c.ray_env(),
                      check=False)
        assert scale.returncode == 0 and "-> 2" in scale.stdout, scale.stdout + scale.stderr
        # while the new worker loads: Prometheus
        targets = _check_prometheus(lambda path, **p: _prom_on(c, PROMETHEUS_PORT, path, **p), run, wait_for)
        ray_hosts = {t["labels"]["instance"].rsplit(":", 1)[0] for t in targets
                     if t["labels"]["job"] == "ray" and t["health"] == "up"}
        assert ray_hosts == {h.ip for h in c.hosts}, targets  # every host's Ray metrics, scraped from the head
        wait_for(lambda: run.metrics()[-1]["rollout_workers_ready"] == 2, "the second rollout worker", 240)
        wait_for(lambda: len({x["worker"] for x in run.read_rollouts()[-4:]}) == 2, "both workers serving")
        assert sorted(placement(c)["RolloutWorker"]) == ["roll0", "roll1"]
        last = run.metrics()[-1]
        assert last["sync_updated"] == 2 and last["mismatch_kl"] < 1e-6, last
    finally:
        stop = c.run("head", ["ray", "job", "stop", "--address", c.dashboard, job], c.ray_env(), timeout=180,
                     check=False)
        judge.kill()
        prom.kill()
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "resume with the same command" in job_logs(c, job)
    last = run.metrics()[-1]["step"]
    assert run.latest_checkpoint().name == f"step_{last:06d}"
    ckpt = run.latest_checkpoint()
    shards = sorted(p.name for p in ckpt.rglob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2, shards  # each learner host's rank wrote its own shard, on the shared folder
    assert not (ROOT / "rl").exists() and not (ROOT / "sft").exists()  # relative run folders went to --out-root
    for h in c.hosts:  # nothing of the runs on any host's own disk
        left = c.run(h, ["sh", "-c", f"find /tmp /dev/shm {ROOT / 'runs'} \\( -name 'step_0*' -o -name 'latest' "
                                     "-o -name '*.safetensors' -o -name 'mp_rank_*' \\) -print"])
        assert left.stdout.strip() == "", (h.name, left.stdout)


def _prom_on(c: Cluster, port: int, path: str, **params) -> dict:
    """Prometheus's API, asked on the head host (it listens on that host's loopback)."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    r = c.run("head", ["python", "-c", "import sys, urllib.request; "
                       "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())", url], c.ray_env(), timeout=60)
    body = json.loads(r.stdout)
    assert body["status"] == "success", body
    return body["data"]


def _check_prometheus(prom, run, wait_for) -> list:
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
    queries = [e.replace("$instance", "|".join(instances)).replace("$__rate_interval", "30s")
               for e in dashboard_py.queries(dashboard)]
    empty = queries
    deadline = time.monotonic() + 120  # Ray's agents export the workers' metrics every few seconds
    while empty and time.monotonic() < deadline:
        empty = [q for q in empty if not prom("query", query=q)["result"]]
        time.sleep(2 if empty else 0)
    assert not empty, empty
    wait_for(lambda: all(r.get("lastEvaluation", "0001").startswith("20")
                         for g in prom("rules")["groups"] for r in g["rules"]), "the rules' evaluation", 60)
    rules = [r for g in prom("rules")["groups"] for r in g["rules"]]
    assert len(rules) == 5 and all(r["health"] == "ok" for r in rules), rules
    targets = prom("targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == {"videop2r", "ray"}, targets  # both scraped
    return targets

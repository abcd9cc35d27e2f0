"""The demo launched as users launch it: `ray job submit` (deploy/submit.sh) to a Ray head started from the
project's environment. The head gets its own ports and process group, so it neither meets nor outlives the test
session's private cluster."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.services import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    venv_bin = str(Path(sys.executable).parent)
    # a stopped job gets SIGTERM, and SIGKILL only after this grace (long enough to write its checkpoint)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_JOB_STOP_WAIT_TIME_S": "60",
           "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true"}
    dash = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dash, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--metrics-export-port": free_port(),
             "--runtime-env-agent-port": free_port()}
    cmd = [f"{venv_bin}/ray", "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=6",
           "--dashboard-host=127.0.0.1"] + [f"{k}={v}" for k, v in ports.items()]
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while True:  # the job API answers once the dashboard is up
        probe = subprocess.run([f"{venv_bin}/ray", "job", "list", "--address", address], env={**env, "RAY_AUTH_MODE": "token"},
                               capture_output=True, text=True)
        # `ray job list` exits 0 even when it could not connect: the head is up when it printed no error
        if probe.returncode == 0 and "Error" not in probe.stdout + probe.stderr:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"ray head did not come up: {log.read_text()[-2000:]}")
        time.sleep(2)
    yield address, env
    # the head's own processes share its process group; its idle workers exit once the raylet is gone
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_train_as_a_ray_job_scales_and_stops_cleanly(ray_head, tiny_model_dir, synthetic_dir, tmp_path):
    """`train` submitted with `ray job submit`: `videop2r scale` reaches it through Redis (1 -> 2 workers, the new
    one serving after it got the weights), and `ray job stop` (SIGTERM) makes it checkpoint and exit cleanly."""
    from cluster.run_dir import RunDir

    address, env = ray_head
    env = {**env, "RAY_ADDRESS": address, "RAY": f"{Path(sys.executable).parent}/ray"}
    out = tmp_path / "run"
    r = subprocess.run(
        [str(ROOT / "deploy" / "submit.sh"), "--no-wait", "--", "train", "--config", "configs/demo.yaml",
         f"run.out_dir={out}", f"model.path={tiny_model_dir}", f"data.dir={synthetic_dir}", "rollout.group_size=2",
         "rollout.max_tokens=8", "trainer.prompts_per_step=2", "trainer.steps=100000", "trainer.checkpoint_every=0",
         "rollout.num_cpus=1", "learner.num_cpus=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    found = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr)
    assert found, (r.stdout + r.stderr)[-3000:]
    job = found.group(0)
    run = RunDir(out)

    def wait_for(pred, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + _logs(job, env)
            time.sleep(1)

    wait_for(lambda: run.metrics(), "the first step")
    scaled = subprocess.run([str(Path(sys.executable).parent / "videop2r"), "scale", "--run", str(out),
                             "--rollout-workers", "2"], capture_output=True, text=True, timeout=60)
    assert scaled.returncode == 0 and "-> 2" in scaled.stdout, scaled.stderr
    wait_for(lambda: run.metrics()[-1]["rollout_workers_ready"] == 2, "the second worker")
    wait_for(lambda: len({x["worker"] for x in run.read_rollouts()[-4:]}) == 2, "both workers serving")
    stop = subprocess.run([env["RAY"], "job", "stop", "--address", address, job], env={**env, "RAY_AUTH_MODE": "token"},
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    logs = _logs(job, env)
    assert "resume with the same command" in logs, logs[-3000:]
    last = run.metrics()[-1]["step"]
    assert run.latest_checkpoint().name == f"step_{last:06d}"  # checkpointed at the step it stopped after


def _logs(job, env):
    r = subprocess.run([env["RAY"], "job", "logs", "--address", env["RAY_ADDRESS"], job],
                       env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr

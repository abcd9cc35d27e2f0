"""The demo launched as users launch it: `ray job submit` (deploy/submit.sh) to a Ray head started from the
project's environment. The head gets its own ports and process group, so it neither meets nor outlives the test
session's private cluster."""

import os
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
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    dash = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dash, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--metrics-export-port": free_port(),
             "--runtime-env-agent-port": free_port()}
    cmd = [f"{venv_bin}/ray", "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=4",
           "--dashboard-host=127.0.0.1"] + [f"{k}={v}" for k, v in ports.items()]
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while True:  # the job API answers once the dashboard is up
        probe = subprocess.run([f"{venv_bin}/ray", "job", "list", "--address", address], env={**env, "RAY_AUTH_MODE": "token"},
                               capture_output=True, text=True)
        if probe.returncode == 0:
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


def test_demo_through_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "run"
    r = subprocess.run(
        [str(ROOT / "deploy" / "submit.sh"), "demo", "--config", "configs/demo.yaml", f"run.out_dir={out}",
         f"model.path={out}/model", f"data.dir={out}/data", "data.synthetic_n=10", "rollout.max_tokens=16"],
        cwd=ROOT, env={**env, "RAY_ADDRESS": address, "RAY": f"{Path(sys.executable).parent}/ray"},
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in r.stdout + r.stderr
    assert "[demo] scored rollouts logged to" in r.stdout
    assert (out / "smoke_rollouts.parquet").is_file()

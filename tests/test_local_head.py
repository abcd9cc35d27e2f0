"""deploy/local-head.sh: a head in its own process group that `stop` ends alone, with Ray's token auth always on;
and exit codes that stay true after Ray starts."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _alive_in_group(pgid: int) -> list[str]:
    """The group's live processes (zombies are dead, only not yet reaped)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status", "name"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.info['name']}")
        except (ProcessLookupError, psutil.Error):
            pass
    return out


# -- deploy/local-head.sh ----------------------------------------------------------------------------------------------
def test_local_head_stop_ends_only_its_own_head(ray_cluster, tmp_path):
    """`stop` ends the head the script started (its whole process group), and the other Ray cluster of this user
    (the test session's) keeps working: `ray stop`, which ends every Ray process of the user, would fail this.
    The head has token auth on although this user had no token yet (a fresh HOME): its job API refuses a request
    without the token (Ray 2.60 alone would have started it open), and the token it made is the owner's only."""
    import signal
    import sys
    import urllib.error
    import urllib.request

    from cluster.services import free_port

    venv_bin = str(Path(sys.executable).parent)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")},
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "VIDEOP2R_HEAD_DIR": str(tmp_path / "state"),
        "RAY_GCS_PORT": str(free_port()),
        "RAY_NUM_CPUS": "1",
        "HOME": str(home),
    }
    script = str(ROOT / "deploy" / "local-head.sh")
    ports = [
        f"--{k}={free_port()}"
        for k in (
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
    ]
    dashboard = free_port()
    started = subprocess.run(
        [script, "start", str(dashboard), "--", *ports], env=env, capture_output=True, text=True, timeout=180
    )
    pgid = int((tmp_path / "state" / "head.pgid").read_text())
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) == 64
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/jobs/", timeout=10)
        assert refused.value.code in (401, 403)
        stopped = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0 and f"process group {pgid}" in stopped.stdout
        assert _alive_in_group(pgid) == []
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @ray_cluster.remote
    def still_serving():
        return "yes"

    assert ray_cluster.get(still_serving.remote(), timeout=120) == "yes"
    again = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing stopped" in again.stdout


def test_a_failed_command_keeps_its_exit_code_after_ray_starts(ray_cluster):
    """Ray's driver-side SIGCHLD setting made every exit code read 0 (and so a refusal look like a success)."""
    assert subprocess.run(["false"]).returncode == 1

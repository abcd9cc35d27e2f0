"""`python -m benchmarks`, run as a user runs it (a subprocess), on small sizes."""

import subprocess
import sys

from tests.conftest import ROOT


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_benchmarks():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for name in ("decode", "rewards", "rollout", "learner"):
        assert name in r.stdout
    r = run("rollout", "--help")
    assert r.returncode == 0 and "--max-tokens" in r.stdout and "--rounds" in r.stdout
    assert run("nonsense").returncode == 2


def test_decode_prints_table(tmp_path):
    r = run("decode", "--data", tmp_path / "b", "--files", 6, "--repeat", 1, "--size", 112)
    assert r.returncode == 0, r.stderr
    assert "raw decord (1 thread)" in r.stdout and "loader/raw" in r.stdout


def test_rewards_prints_table(tmp_path, tiny_model_dir):
    r = run("rewards", "--data", tmp_path / "b", "--model", tiny_model_dir, "--n", 60)
    assert r.returncode == 0, r.stderr[-2000:]
    for row in ("rule rewards, 1 worker", "cache hit, 1 key (p50 / p99)", "reward pool, 2 Ray worker(s)", "2 vs 1 workers"):
        assert row in r.stdout


def test_sync_prints_table_and_the_relay_sends_the_model_once():
    r = run("sync", "--mb", 4, "--rounds", 1, "--receivers", 1, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
    by = {(int(x[0]), " ".join(x[1:-3])): float(x[-2]) for x in rows}  # (receivers, scheme) -> sender bytes / model
    assert by[(2, "per-worker channels")] == 2.0 and by[(2, "group, relay")] == 1.0 and by[(1, "group, relay")] == 1.0

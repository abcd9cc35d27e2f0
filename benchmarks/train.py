"""Benchmark of the RL step on the real stack, printed as a table: the step-time split (decode, generate, score,
update, sync) over ``steps`` steps after a warm-up step, the driver's overhead (step wall time / sum of the
parts; target <= 1.05, synchronous mode), synchronous vs overlapped step time, and PA-GRPO vs GRPO end to end
(target <= 1.03). All runs start from one short SFT of the tiny model on demo-style data, with the same seeds.

On a 2-core box, generation and the update compete for the same cores, so overlapping them cannot gain much here:
the table shows what it costs or saves; on a GPU cluster they run on different devices.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from benchmarks import verbose

PARTS = ("time/decode", "time/generate", "time/score", "time/update", "time/sync")


def _setup(root: Path) -> tuple[Path, Path]:
    from toy.synthetic import make_synthetic
    from toy.tiny_model import build_tiny_model

    data, model = root / "train-data", root / "tiny-model"
    if not (data / "train.json").is_file():
        make_synthetic(data, n=200, seed=0, n_eval=10, frames=8, size=56, style="demo", progress=False)
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    return data, model


def sft_dir(root: Path, sft_steps: int) -> Path:
    """The SFT run the RL runs start from, by its length (a shorter one made earlier is never taken for it)."""
    return root / f"train-sft-{sft_steps}"


def run_bench_train(root: str | Path = "runs/bench", steps: int = 10, prompts: int = 8, sft_steps: int = 150) -> int:
    from cluster.config import Config
    from cluster.config_loader import load_config
    from cluster.run_dir import RunDir
    from cluster.stack import Stack
    from commands.stages import run_sft, run_train

    root = Path(root)
    data, model = _setup(root)
    base = [
        f"model.path={model}",
        f"data.dir={data}",
        f"trainer.prompts_per_step={prompts}",
        "trainer.checkpoint_every=0",
        f"trainer.steps={steps + 1}",
        "trainer.log_rollouts=false",
        f"sft.steps={sft_steps}",
        "sft.checkpoint_every=0",
    ]
    sft_out = sft_dir(root, sft_steps)
    cfg = load_config(Config, "configs/demo.yaml", base + [f"run.out_dir={sft_out}"])
    runs = {
        "pa_grpo, synchronous": ["trainer.max_staleness=0"],
        "pa_grpo, overlapped": ["trainer.max_staleness=1"],
        "grpo, synchronous": ["trainer.max_staleness=0", "learner.algorithm=grpo"],
    }
    results = {}
    with Stack(cfg, verbose()) as stack:
        sft = (
            run_sft(cfg, stack=stack) if not (sft_out / "hf" / "config.json").is_file() else {"hf": str(sft_out / "hf")}
        )
        for name, extra in runs.items():
            out = root / ("train-" + name.replace(", ", "-"))
            shutil.rmtree(out, ignore_errors=True)
            c = load_config(
                Config, "configs/demo.yaml", base + extra + [f"run.out_dir={out}", f"model.path={sft['hf']}"]
            )
            c.cache.url, c.cache.start_local = cfg.cache.url, False
            run_train(c, stack=stack)
            rows = RunDir(out).metrics()
            for prev, row in zip(rows, rows[1:]):  # wall time between step ends: logging and bookkeeping included
                row["wall"] = row["time"] - prev["time"]
            results[name] = rows[1:]  # the first step warms up
    print(
        f"\nRL step benchmark: {steps} steps after a warm-up, B={prompts} prompts x G={cfg.rollout.group_size}, "
        f"tiny model after {sft_steps} SFT steps, 1 rollout worker, 1 learner rank (median seconds per step)"
    )
    print(
        f"{'run':22s} {'step':>6s} "
        + " ".join(f"{p[5:]:>8s}" for p in PARTS)
        + f" {'overhead':>9s} {'gen tokens':>10s}"
    )
    med, upd = {}, {}
    for name, rows in results.items():
        med[name] = statistics.median(r["wall"] for r in rows)
        upd[name] = statistics.median(r["time/update"] for r in rows)
        parts = [statistics.median(r[p] for r in rows) for p in PARTS]
        # step wall (end to end) / the parts; in overlapped mode the parts run at the same time, so it is < 1
        overhead = statistics.median(r["wall"] / sum(r[p] for p in PARTS) for r in rows)
        tokens = statistics.median(r["generated_tokens"] for r in rows)
        print(
            f"{name:22s} {med[name]:6.2f} " + " ".join(f"{p:8.2f}" for p in parts) + f" {overhead:9.3f} {tokens:10.0f}"
        )
    sync, over, grpo = med["pa_grpo, synchronous"], med["pa_grpo, overlapped"], med["grpo, synchronous"]
    print(f"\noverlapped / synchronous step time: {over / sync:.2f}  (2 cores shared by generation and update)")
    print(
        f"PA-GRPO / GRPO step time: {sync / grpo:.3f} end to end (target <= 1.03); update alone "
        f"{upd['pa_grpo, synchronous'] / upd['grpo, synchronous']:.3f}. The two policies drift apart from step 1, so "
        "their responses (and generation times) differ in length: compare the gen tokens column."
    )
    return 0

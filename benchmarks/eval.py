"""Benchmark of the data pipeline and evaluation, printed as a table:

1. evaluation throughput (rows/s: decode, generate, score with ``eval_score``) through 1 vs 2 rollout workers on
   the same rows, sampling and seeds, measured once the workers are up (each worker gets ``rollout.num_cpus``),
   beside one worker of the two workers' CPUs and two workers given 2 chunks of each batch;
2. ``make-cot`` end to end (teacher generation, answer check, oracle judge through Redis, Parquet), rows/s
   including its start-up, and its funnel.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import verbose


def _ensure(data: Path, model: Path) -> None:
    from toy.synthetic import make_synthetic
    from toy.tiny_model import build_tiny_model

    if not (data / "train.json").is_file():
        make_synthetic(data, n=80, seed=0, progress=False)
    if not (model / "config.json").is_file():
        build_tiny_model(model)


def _eval_rows_per_s(cfg, stack, items, workers: int, batch_rows: int, **rollout) -> float:
    """Rows/s of ``workers`` rollout workers, ``rollout`` overriding fields of the rollout section."""
    from actors.rollout_group import RolloutGroup
    from cluster.evaluate import score_items

    group = RolloutGroup(
        cfg.rollout.model_copy(update=rollout), cfg.transport, cfg.model.path, cfg.model.dtype, num_workers=workers
    )
    try:
        group.wait_until_ready()
        score_items(group, None, stack.tokenizer, items[:4], cfg.eval)  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(items), batch_rows):
            score_items(group, None, stack.tokenizer, items[start : start + batch_rows], cfg.eval)
        return len(items) / (time.perf_counter() - t0)
    finally:
        group.shutdown()


def run_bench_eval(
    root: str | Path = "runs/bench",
    rows: int = 48,
    max_tokens: int = 64,
    num_cpus: float = 1,
    teacher: str | None = None,
    data: str | None = None,
) -> int:
    """``teacher``/``data``: a trained model and its data (e.g. the demo's ``runs/demo/sft/hf`` and
    ``runs/demo/data``), so that make-cot's later steps (answer check, judge) see real work; default: the random
    tiny model, whose outputs all fail the template."""
    from cluster.config import Config
    from cluster.config_loader import load_config
    from commands.make_cot import run_make_cot
    from cluster.stack import Dataset, Stack

    root = Path(root)
    data_dir, model = Path(data) if data else root / "data", Path(teacher) if teacher else root / "tiny-model"
    if not (teacher and data):
        _ensure(data_dir, model)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            Config,
            "configs/demo.yaml",
            [  # the demo's frames (8 at 56x56) and its oracle judge
                f"model.path={model}",
                f"data.dir={data_dir}",
                f"eval.max_tokens={max_tokens}",
                f"rollout.num_cpus={num_cpus}",
                f"cot.input={data_dir / 'train.json'}",
                f"cot.out_dir={tmp}/cot",
                f"cot.max_rows={rows}",
                f"cot.max_tokens={max_tokens}",
                "cot.batch_rows=16",
                "eval.batch_rows=16",
            ],
        )
        with Stack(cfg, verbose()) as stack:
            ds = Dataset(cfg, "train.json", sampling=cfg.eval.sampling(cfg.video))
            items = [it for _, it in ds.load(list(range(min(rows, len(ds)))))]
            one = _eval_rows_per_s(cfg, stack, items, 1, cfg.eval.batch_rows)
            # the same CPUs in one worker; then two workers with the batch cut into 1 (the default) or 2 chunks
            # per worker (a worker serves its chunks one after another: vLLM's batch halves)
            one_wide = _eval_rows_per_s(cfg, stack, items, 1, cfg.eval.batch_rows, num_cpus=2 * num_cpus)
            two = _eval_rows_per_s(cfg, stack, items, 2, cfg.eval.batch_rows, chunks_per_worker=1)
            two_halved = _eval_rows_per_s(cfg, stack, items, 2, cfg.eval.batch_rows, chunks_per_worker=2)
            t0 = time.perf_counter()
            funnel = run_make_cot(cfg)["funnel"]
            cot_rate = rows / (time.perf_counter() - t0)
    print(f"\nData pipeline and evaluation ({len(items)} rows, {max_tokens} new tokens, {num_cpus} CPU per worker)")
    print(f"  {'eval, 1 rollout worker (rows/s)':58s} {one:8.2f}")
    print(f"  {f'eval, 1 rollout worker of {2 * num_cpus:g} CPUs (rows/s)':58s} {one_wide:8.2f}")
    print(f"  {'eval, 2 rollout workers (rows/s)':58s} {two:8.2f}")
    print(f"  {'eval, 2 rollout workers, 2 chunks per worker (rows/s)':58s} {two_halved:8.2f}")
    print(f"  {'eval 2 vs 1 workers':58s} {two / one:8.2f}x")
    print(f"  {'eval 2 vs 1 workers, same CPUs':58s} {two / one_wide:8.2f}x")
    print(f"  {'eval 2 vs 1 workers, same CPUs, 2 chunks per worker':58s} {two_halved / one_wide:8.2f}x")
    print(f"  {'make-cot end to end, incl. start (rows/s)':58s} {cot_rate:8.2f}")
    print("  make-cot funnel: " + ", ".join(f"{k} {n}" for k, n in funnel))
    return 0

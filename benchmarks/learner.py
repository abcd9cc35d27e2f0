"""Benchmark of the learner, printed as tables: one PA-GRPO step vs one GRPO step on the same rollout batch
(alternating, same learner; target ratio <= 1.05), log-prob throughput of the policy on that batch, and the RL step
with the frozen vision tower's features computed once per prompt group vs in every pass
(``learner.share_vision_features``), on the tiny model and on a 3B-width slice with a full-width tower; and what a
weight sync carries with full fine-tuning and with LoRA (``learner.lora``)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.gpu_step import frame_size


def alternate(learner, rollouts, group_size: int, settings: dict, rounds: int) -> dict:
    """Median RL-step seconds of the same learner and batch under each setting (``{name: (cfg field, value)}``),
    alternating round by round after one warm-up step each, so that drift hits all of them alike."""
    times = {name: [] for name in settings}
    for r in range(rounds + 1):
        for name, (field, value) in settings.items():
            setattr(learner.cfg, field, value)
            t0 = time.perf_counter()
            learner.rl_step(rollouts, group_size)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def vision_rows(learner, rollouts, group_size: int, rounds: int, label: str) -> None:
    """The step with the tower's features once per prompt group against every pass running the tower."""
    t = alternate(
        learner,
        rollouts,
        group_size,
        {"once": ("share_vision_features", True), "every": ("share_vision_features", False)},
        rounds,
    )
    prompts = len(rollouts) // group_size
    print(f"{label + ', features once per group':64s} {t['once'] * 1e3:9.0f} ms")
    print(f"{label + ', tower in every pass':64s} {t['every'] * 1e3:9.0f} ms")
    print(f"{label + ', once / every':64s} {t['once'] / t['every']:9.2f}   ({prompts} prompt(s) x G={group_size})")


def token_budget_rows(learner, items, group_size: int, rounds: int) -> None:
    """Micro-batches by a token budget against by rows, on a batch whose responses vary 1-8x in length: the budget
    is micro_batch_size x the longest row (the memory the row cut may need), so only the cut differs."""
    from learner.batch import prompt_inputs
    from learner.engine import Rollout

    tok = learner.processor.tokenizer
    rollouts = []
    for g, it in enumerate(items):
        text = tok.encode(" ".join(it.sample.problem.split() * 40), add_special_tokens=False)
        for j in range(group_size):
            n = round(32 * (1 + 7 * j / max(1, group_size - 1)))  # 32 .. 256 tokens
            rollouts.append(Rollout(it, text[:n], r_perception=float(j % 2), r_reasoning=float((j + g) % 2)))
    longest = max(
        int(prompt_inputs(learner.processor, r.item)["input_ids"].shape[1]) + len(r.response_ids) for r in rollouts
    )
    budget = learner.cfg.micro_batch_size * longest
    t = alternate(
        learner,
        rollouts,
        group_size,
        {"tokens": ("micro_batch_tokens", budget), "rows": ("micro_batch_tokens", None)},
        rounds,
    )
    padding = {}
    for name, value in (("tokens", budget), ("rows", None)):
        learner.cfg.micro_batch_tokens = value
        padding[name] = learner.rl_step(rollouts, group_size)["padding_fraction"]
    learner.cfg.micro_batch_tokens = None
    print(
        f"\nmicro-batches: responses of 32-256 tokens (1-8x), {len(rollouts)} rows, median of {rounds} alternating rounds"
    )
    print(
        f"{'by rows (micro_batch_size=' + str(learner.cfg.micro_batch_size) + ')':40s} {t['rows'] * 1e3:9.0f} ms   "
        f"padding {padding['rows']:.2f}"
    )
    print(
        f"{'by tokens (micro_batch_tokens=' + str(budget) + ')':40s} {t['tokens'] * 1e3:9.0f} ms   "
        f"padding {padding['tokens']:.2f}"
    )
    print(f"{'tokens / rows step time':40s} {t['tokens'] / t['rows']:9.2f}")


def _payload(learner, rounds: int, adapters: bool = False, **kw) -> tuple[float, float]:
    """(MiB, median ms) of producing the named weights ``named_weights(**kw)`` yields (gathered, merged, copied),
    or (``adapters``) the adapters alone."""
    times, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        named = learner.adapter_weights().items() if adapters else learner.named_weights(**kw)
        size = sum(t.numel() * t.element_size() for _, t in named)
        times.append(time.perf_counter() - t0)
    return size / 2**20, statistics.median(times) * 1e3


def lora_rows(cfg, model: str, full, rollouts, group_size: int, rounds: int, rank: int = 8) -> None:
    """What a weight sync carries with full fine-tuning and with LoRA (``learner.lora.rank``), and the RL step of
    each on the same batch: the payload's size and the time to gather (and merge) it on the learner."""
    from learner.engine import Learner

    lora_cfg = cfg.model_copy(deep=True)
    lora_cfg.learner.lora.rank, lora_cfg.learner.lora.alpha = rank, 2.0 * rank
    lora = Learner(lora_cfg, model)
    step = {}
    for name, learner in (("full", full), ("lora", lora)):
        learner.rl_step(rollouts, group_size)  # warm-up
        t0 = time.perf_counter()
        for _ in range(rounds):
            learner.rl_step(rollouts, group_size)
        step[name] = (time.perf_counter() - t0) / rounds * 1e3
    print(f"\nweight sync payload (learner side: gather, merge, copy), median of {rounds}; LoRA rank {rank}")
    rows = [
        ("every weight (hf/, a worker's first load)", *_payload(full, rounds)),
        ("full fine-tuning: the trainable weights", *_payload(full, rounds, trainable_only=True)),
        ("LoRA: the adapted layers, merged (sync=merged)", *_payload(lora, rounds, trainable_only=True)),
        ("LoRA: the adapters alone (sync=adapter)", *_payload(lora, rounds, adapters=True)),
    ]
    for label, mib, ms in rows:
        print(f"{label:48s} {mib:9.2f} MiB {ms:9.1f} ms")
    print(f"{'RL step, full fine-tuning / LoRA':48s} {step['full']:9.0f} ms {step['lora']:9.0f} ms")


def wide_learner(root: Path, blocks: int, frames: int, pixels: int, group: int, zero_stage: int):
    """A 3B-width slice (1 decoder layer, ``blocks`` vision blocks of the released 1,280 width; embeddings frozen
    with the tower, to fit the CPU box) and G rollouts of one synthetic video prompt."""
    from benchmarks.gpu_step import make_rollouts
    from cluster.config import LearnerSection
    from learner.engine import Learner
    from toy.shaped_model import build_shaped_model

    path = root / f"3b-slice-1l-{blocks}v"
    if not (path / "config.json").is_file():
        build_shaped_model(path, "3b-slice", text_layers=1, vision_blocks=blocks)
    cfg = LearnerSection(
        zero_stage=zero_stage, lr=1e-6, micro_batch_size=4, freeze=["model.visual", "model.language_model.embed_tokens"]
    )
    learner = Learner(cfg, str(path))
    return learner, make_rollouts(learner.processor.tokenizer, frames, pixels, group, 24, 48)


def run_bench_learner(
    root: str | Path = "runs/bench",
    groups: int = 4,
    group_size: int = 4,
    rounds: int = 5,
    model: str | None = None,
    zero_stage: int = 2,
    wide_blocks: int = 8,
    wide_frames: int = 4,
    wide_pixels: int = 16,
    wide_group: int = 8,
) -> int:
    from cluster.config import Config
    from cluster.config_loader import load_config
    from learner.engine import Learner, Rollout
    from toy.tiny_model import build_tiny_model
    from videoqa.loader import MediaLoader
    from videoqa.prompts import sft_target
    from videoqa.schema import load_samples
    from toy.synthetic import make_synthetic

    root = Path(root)
    data = root / "data"
    if not (data / "cot.json").is_file():
        make_synthetic(data, n=80, seed=0, progress=False)
    model = model or str(root / "tiny-model")
    if not (Path(model) / "config.json").is_file():
        build_tiny_model(model)
    cfg = load_config(
        Config,
        "configs/demo.yaml",
        [f"learner.zero_stage={zero_stage}", "learner.lr=1e-5", f"learner.micro_batch_size={group_size}"],
    )
    learner = Learner(cfg, model)
    items = list(MediaLoader(data, cfg.video.sampling())(load_samples(data / "cot.json")[:groups]))
    tok = learner.processor.tokenizer
    rollouts = []
    for g, it in enumerate(items):
        full = tok.encode(sft_target(it.sample), add_special_tokens=False)
        for j in range(group_size):
            ids = full if j % 2 == 0 else full[: max(4, len(full) - 7 * j)]
            rollouts.append(Rollout(it, ids, r_perception=float(j % 3), r_reasoning=float((j + g) % 2)))
    n_tokens = sum(len(r.response_ids) for r in rollouts)

    times = {"pa_grpo": [], "grpo": []}
    for algo in ("pa_grpo", "grpo"):  # warm-up
        learner.cfg.algorithm = algo
        learner.rl_step(rollouts, group_size)
    for _ in range(rounds):
        for algo in ("pa_grpo", "grpo"):
            learner.cfg.algorithm = algo
            t0 = time.perf_counter()
            learner.rl_step(rollouts, group_size)
            times[algo].append(time.perf_counter() - t0)
    responses = [r.response_ids for r in rollouts]
    ritems = [r.item for r in rollouts]
    lp_times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        learner.logprobs(ritems, responses)
        lp_times.append(time.perf_counter() - t0)
    pa, gr = statistics.median(times["pa_grpo"]), statistics.median(times["grpo"])
    print(
        f"learner benchmark: {len(rollouts)} rollouts ({groups} groups x G={group_size}), {n_tokens} generated tokens, "
        f"ZeRO-{zero_stage}, {cfg.learner.dtype}, median of {rounds}"
    )
    print(f"{'PA-GRPO step':32s} {pa * 1e3:9.0f} ms")
    print(f"{'GRPO step':32s} {gr * 1e3:9.0f} ms")
    print(f"{'PA-GRPO / GRPO':32s} {pa / gr:9.2f}   (target <= 1.05)")
    lp = statistics.median(lp_times)
    print(f"{'log-prob throughput':32s} {n_tokens / lp:9,.0f} generated tok/s ({lp * 1e3:.0f} ms per batch)")

    token_budget_rows(learner, items, group_size, rounds)
    learner.cfg.algorithm = "pa_grpo"
    lora_rows(cfg, model, learner, rollouts, group_size, rounds)

    print(f"\nvision tower: PA-GRPO step, tower frozen, median of {rounds} alternating rounds")
    learner.cfg.algorithm = "pa_grpo"
    vision_rows(learner, rollouts, group_size, rounds, "tiny model")
    if wide_blocks:
        del learner
        wide, wide_rollouts = wide_learner(root, wide_blocks, wide_frames, wide_pixels, wide_group, zero_stage)
        h, w = frame_size(wide_pixels)
        vision_rows(
            wide,
            wide_rollouts,
            wide_group,
            rounds,
            f"3B width, {wide_blocks} vision blocks, {wide_frames} frames {h}x{w}",
        )
    return 0

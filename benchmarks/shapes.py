"""``python -m benchmarks shapes``: Qwen2.5-VL-3B / -7B and Qwen3-VL-8B widths, cut in depth (``toy/shaped_model.py``), end to end on
the CPU through the system's own actors: a vLLM rollout worker and a DeepSpeed learner rank (``RolloutGroup`` and
``LearnerGroup``, as a run uses them), with the real transport between them.

For each shape and ZeRO stage, one table row:
1. the learner publishes its weights and the bucketed sync sends them to the worker (every tensor, several of them
   larger than a bucket at the released widths);
2. the worker samples G responses to one real video prompt (16 frames at the paper's 128x28x28 budget by default);
3. one PA-GRPO step on them: its ``mismatch_kl`` compares vLLM's log-probs with the learner's for the same weights;
4. publish and sync the updated weights (the sync time of the table: the learner's gather and snapshot, the
   transfer, the worker's load), sample again, and compare vLLM with the learner once more (after update);
5. the peak resident memory of each role's processes (VmHWM; the rollout worker's vLLM engine processes included).

Both mismatch KLs must stay below 1e-6 in float32; the table says so per row. A random model's rows above the
tokenizer's ids are padding (as in the released embeddings), so sampling keeps to the tokenizer's text ids.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

KL_BOUND = 1e-6


def _peak_gib(pids: list[int]) -> float:
    """The sum of each process's peak resident set (VmHWM) in GiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 2**20


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


def _learner_pid(learner) -> list[int]:
    import os

    import ray

    return _tree(ray.get(learner.ranks[0].run.remote(lambda _: os.getpid())))


def _k3(a, b, mask) -> tuple[float, float]:
    """(k3 estimate of KL between the two log-prob sets, max |difference|) over the masked tokens."""
    d = (a - b).double() * mask
    k3 = float(((d.exp() - 1 - d) * mask).sum() / mask.sum().clamp(min=1))
    return k3, float(d.abs().max())


def _data(root: Path, frames: int, size: int):
    from toy.synthetic import make_synthetic

    data = root / f"data-{frames}x{size}"
    if not (data / "train.json").is_file():
        make_synthetic(data, n=4, n_eval=2, seed=0, frames=frames, size=size, style="demo", progress=False)
    return data


def _model(root: Path, shape: str, text_layers: int) -> Path:
    from toy.shaped_model import build_shaped_model
    from toy.tiny_model import build_tiny_model

    if shape == "tiny":  # the tests' model (its own 2 layers), for the small end of a comparison
        model = root / "tiny"
        return model if (model / "config.json").is_file() else build_tiny_model(model, seed=0)
    model = root / f"{shape}-{text_layers}l"
    if not (model / "videop2r_shape.json").is_file():
        build_shaped_model(model, shape, text_layers=text_layers)
    return model


def _vllm_logprobs(res, like):
    """vLLM's log-probs of ``res``'s responses as a (G, width) tensor like ``like``, and the mask."""
    import torch

    theirs, mask = torch.zeros_like(like), torch.zeros_like(like)
    for i, r in enumerate(res.responses):
        theirs[i, : len(r.logprobs)] = torch.tensor(r.logprobs)
        mask[i, : len(r.logprobs)] = 1
    return theirs, mask


def _score(learner, item, res):
    import ray

    responses = [r.token_ids for r in res.responses]
    return ray.get(learner.ranks[0].run.remote(lambda rank: rank.logprobs([item] * len(responses), responses)))


def _plan_row(plan, bucket_mb: float) -> dict:
    import torch

    sizes = [
        e.numel * torch.empty((), dtype=getattr(torch, b.dtype)).element_size() for b in plan.buckets for e in b.entries
    ]
    return dict(tensors=len(sizes), over_bucket=sum(s > bucket_mb * 2**20 for s in sizes), sync_mb=plan.nbytes / 2**20)


def measure(
    cfg, model: Path, item, tokenizer, allowed: list[int], zero_stage: int, version0: int, together: bool = True
) -> dict:
    """One row (module docstring) with fresh actors; they are shut down before returning. ``together=False``
    (a shape whose two roles do not fit the machine at once): the worker samples and goes, then the learner scores
    those samples and steps; no sync, no after-update comparison."""
    import ray

    from actors.rollout_group import RolloutGroup
    from actors.rollout_worker import RolloutRequest
    from actors.vllm_inputs import vllm_prompt
    from cluster.learner_group import LearnerGroup

    cfg = cfg.model_copy(deep=True)
    cfg.learner.zero_stage = zero_stage
    G = cfg.rollout.group_size
    row: dict = {"zero_stage": zero_stage, "together": together, "sync_s": None, "kl_after": None}
    request = [RolloutRequest("shape-0", vllm_prompt(tokenizer, item))]
    sample = {"allowed_token_ids": allowed}
    learner = rollout = None

    def start_rollout(source):
        return RolloutGroup(
            cfg.rollout, cfg.transport, str(model), source=source, num_workers=1, lora_rank=cfg.learner.lora.served_rank
        )

    def stop_rollout(group):
        worker = next(iter(group.slots.values())).actor
        row["rollout_gib"] = _peak_gib(_tree(ray.get(worker.state.remote())["pid"]))
        group.shutdown()  # its actors and their placement groups: the next row needs the CPUs

    try:
        if not together:  # sample first, alone
            rollout = start_rollout(None)
            res = rollout.generate(request, step=0, logprobs=True, overrides=sample)[0]
            stop_rollout(rollout)
            rollout = None
        learner = LearnerGroup(cfg, str(model), transport=cfg.transport)
        plan = learner.publish(version0)  # the learner's own weights (ZeRO-3: gathered)
        row.update(_plan_row(plan, cfg.transport.bucket_mb))
        if together:
            rollout = start_rollout(learner)
            sync = rollout.sync_weights()
            row.update(sync_ok=sync.updated == sorted(rollout.slots))
            res = rollout.generate(request, step=0, logprobs=True, overrides=sample)[0]
        row["prompt_tokens"] = len(res.prompt_token_ids)
        row["response_tokens"] = sum(len(r.token_ids) for r in res.responses)
        # rewards with variance in both processes that do not cancel: a random model's responses have no
        # observation span, so each token takes the mean of A_P and A_R (learner/masks.py)
        rollouts = [
            dict(
                prompt_index=0,
                response_ids=r.token_ids,
                r_perception=float(j % 2),
                r_reasoning=float(j >= G / 2),
                perception_valid=True,
                behaviour_logprobs=r.logprobs,
                stale=False,
            )
            for j, r in enumerate(res.responses)
        ]
        t1 = time.perf_counter()
        stats = learner.finish_rl_step(learner.rl_step_async(ray.put([item]), rollouts, G, False))
        row.update(step_s=time.perf_counter() - t1, kl_before=stats["mismatch_kl"], loss=stats.get("loss"))
        moved = _score(learner, item, res)
        before, _ = _vllm_logprobs(res, moved)
        row["update_shift"] = float((moved - before).abs().max())  # the update moved the weights (else: 0)
        if together:
            t1 = time.perf_counter()  # a step's sync, as a run times it: the gather and snapshot included
            learner.publish(version0 + 1)
            sync = rollout.sync_weights()
            row.update(sync_s=time.perf_counter() - t1, resync_ok=sync.updated == sorted(rollout.slots))
            t1 = time.perf_counter()
            res = rollout.generate(request, step=1, logprobs=True, overrides=sample)[0]
            row["generate_s"] = time.perf_counter() - t1  # with an adapter: vLLM's LoRA kernels included
            ours = _score(learner, item, res)
            theirs, mask = _vllm_logprobs(res, ours)
            row["kl_after"], row["max_diff_after"] = _k3(ours, theirs, mask)
        row["learner_gib"] = _peak_gib(_learner_pid(learner))
    finally:
        if rollout is not None:
            stop_rollout(rollout)
        if learner is not None:
            learner.shutdown()
    synced = not together or (row.get("sync_ok") and row.get("resync_ok") and row["kl_after"] < KL_BOUND)
    row["ok"] = bool(synced and row["kl_before"] < KL_BOUND and row["update_shift"] > 1e-4)
    return row


def run_bench_shapes(
    root: str | Path = "runs/bench/shapes",
    shapes=("3b-slice",),
    zero_stages=(2, 3),
    frames: int = 16,
    size: int = 308,
    max_pixels: int = 128 * 28 * 28,
    group_size: int = 4,
    max_tokens: int = 64,
    bucket_mb: float = 64,
    overrides: list[str] = (),
    verbose: bool = False,
    out: str | None = None,
    text_layers: int = 2,
    train_embeddings: bool = False,
    apart: bool = False,
    force: bool = False,
    weights=("full",),
    lora_rank: int = 64,
) -> int:
    from cluster.config import Config
    from cluster.config_loader import load_config
    from transformers import AutoTokenizer

    from cluster.services import init_ray
    from toy.shaped_model import text_token_ids
    from videoqa.families import family_of
    from videoqa.loader import MediaLoader
    from videoqa.schema import load_samples

    if out and Path(out).exists() and not force:  # before anything starts: never over a user's file
        print(f"shapes: {out} already exists; pass --force to replace it", file=sys.stderr)
        return 2
    if text_layers < 1:
        print(f"shapes: --text-layers must be at least 1 (got {text_layers})", file=sys.stderr)
        return 2
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" while a slice is built
    root = Path(root)
    data = _data(root, frames, size)
    base = [
        f"data.dir={data}",
        f"video.nframes={frames}",
        f"video.max_pixels={max_pixels}",
        "rollout.num_cpus=1",
        f"rollout.group_size={group_size}",
        f"rollout.max_tokens={max_tokens}",
        "rollout.max_model_len=4096",
        "learner.num_cpus=1",
        "learner.lr=1e-3",
        f"learner.micro_batch_size={group_size}",
        f"transport.bucket_mb={bucket_mb}",
        "transport.timeout_s=300",
        "rollout.kv_cache_gib=0.5",
    ]
    if not train_embeddings:  # their gradients and AdamW moments alone are 3.7 GB (3B) / 13 GB (7B) in float32
        base.append("learner.freeze=[model.visual,model.language_model.embed_tokens,lm_head]")
    base += list(overrides)
    init_ray(verbose, num_cpus=4)
    rows = []
    for shape in shapes:
        model = _model(root, shape, text_layers)
        cfg = load_config(Config, "configs/demo.yaml", [f"model.path={model}", *base])
        factor = family_of(model).pixel_factor  # frame sides: multiples of 28 (Qwen2.5-VL) or 32 (Qwen3-VL)
        item = next(iter(MediaLoader(data, cfg.video.sampling(factor))(load_samples(data / "train.json")[:1])))
        tokenizer = AutoTokenizer.from_pretrained(model)
        allowed = text_token_ids(tokenizer)
        for mode in weights:
            mode_cfg = (
                cfg
                if mode == "full"
                else load_config(
                    Config,
                    "configs/demo.yaml",
                    [
                        f"model.path={model}",
                        *base,
                        f"learner.lora.rank={lora_rank}",
                        f"learner.lora.alpha={2 * lora_rank}",
                        f"learner.lora.sync={mode.removeprefix('lora-')}",
                    ],
                )
            )
            for z in zero_stages:
                print(f"[shapes] {shape}, {mode}, ZeRO-{z} ...", flush=True)
                head = {"shape": shape, "weights": mode, "zero_stage": z}
                try:
                    rows.append(
                        {
                            **head,
                            **measure(
                                mode_cfg, model, item, tokenizer, allowed, z, version0=10 * z + 1, together=not apart
                            ),
                        }
                    )
                except Exception as e:  # noqa: BLE001 - e.g. Ray's OOM killer: a row of the table, the others run
                    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    rows.append({**head, "ok": False, "error": f"{type(e).__name__}: {why[:160]}"})
    print(table(rows, frames, max_pixels, group_size, bucket_mb, text_layers, train_embeddings, lora_rank))
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


def _num(v, width: int, fmt: str) -> str:
    return f"{'-':>{width}s}" if v is None else f"{v:>{width}{fmt}}"


def table(
    rows: list[dict],
    frames: int,
    max_pixels: int,
    group_size: int,
    bucket_mb: float,
    text_layers: int,
    train_embeddings: bool,
    lora_rank: int = 64,
) -> str:
    lines = [
        f"shapes benchmark (CPU, float32): released widths, {text_layers} decoder layer(s) and 4 vision blocks; "
        f"{frames} frames of at most {max_pixels} px, G={group_size}, {bucket_mb:g} MiB buckets; "
        f"trained: decoder layers{' and embeddings' if train_embeddings else ' (embeddings and vision frozen)'}; "
        f"mismatch KL bound {KL_BOUND:g}",
        f"{'shape':17s} {'weights':12s} {'ZeRO':>4s} {'prompt':>6s} {'resp':>5s} {'tensors':>7s} {'>bucket':>7s} {'sync MiB':>8s} "
        f"{'sync s':>6s} {'gen s':>6s} {'step s':>6s} {'KL before':>9s} {'moved':>7s} {'KL after':>9s} "
        f"{'learner GiB':>11s} "
        f"{'rollout GiB':>11s} {'ok':>3s}",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['shape']:17s} {r['weights']:12s} {r['zero_stage']:>4d} failed: {r['error']}")
            continue
        lines.append(
            f"{r['shape']:17s} {r['weights']:12s} {r['zero_stage']:>4d} {r['prompt_tokens']:>6d} "
            f"{r['response_tokens']:>5d} {r['tensors']:>7d} {r['over_bucket']:>7d} "
            f"{_num(r['sync_mb'], 8, '.0f' if r['sync_mb'] >= 10 else '.2f')} {_num(r['sync_s'], 6, '.2f')} "
            f"{_num(r.get('generate_s'), 6, '.2f')} "
            f"{r['step_s']:>6.1f} {r['kl_before']:>9.1e} {r['update_shift']:>7.0e} "
            f"{_num(r['kl_after'], 9, '.1e')} "
            f"{r['learner_gib']:>11.1f} "
            f"{r['rollout_gib']:>11.1f} {'yes' if r['ok'] else 'NO':>3s}"
        )
    lines.append(
        "KL before / after: k3 KL between vLLM's and the learner's log-probs of vLLM's samples, with the "
        "same weights, before the update and after it is synced; moved: the update's largest change of a "
        "sampled token's log-prob (the update did move the weights)"
    )
    if any(r.get("weights", "full") != "full" for r in rows):
        lines.append(
            f"weights: full = the trainable weights; lora-merged = LoRA rank {lora_rank}, the adapted layers "
            "merged (learner.lora.sync=merged); lora-adapter = the adapters alone, served by vLLM's LoRA "
            "support (=adapter); sync s: the learner's gather and snapshot, the transfer and the worker's load"
        )
    lines.append(
        "peak memory: each role's processes' peak resident sets (VmHWM), summed; the rollout worker's "
        "include its vLLM engine processes"
    )
    if any(not r.get("together", True) for r in rows):
        lines.append(
            "sync and KL after '-': the roles ran one after the other (--apart), as both do not fit this "
            "machine at once; KL before compares the worker's samples with the learner that scored them"
        )
    return "\n".join(lines)

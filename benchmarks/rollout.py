"""Benchmark of the rollout side, printed as a table, each pair measured side by side in one run:

1. rollout throughput through the worker group (one Ray worker) vs raw ``vllm.LLM.generate`` in this process, on
   the same video prompts, sampling and per-request seeds (target ratio >= 0.95). Both engines stay up and the
   rounds alternate; on 2 shared cores single rounds vary by about 10%, so the median of paired rounds is
   printed beside the best-vs-best ratio;
2. weight-sync time into the vLLM worker vs a raw gloo broadcast of the same bytes, in the same buckets, to a
   plain receiver process that only receives (target <= 1.2x), for the tiny model and a ~100M-parameter one.
"""

from __future__ import annotations

import gc
import statistics
import multiprocessing as mp
import time
from pathlib import Path

from benchmarks import verbose


def _raw_receiver(host: str, port: int, secret: str, plan_dict: dict, rounds: int, timeout_s: float) -> None:
    from actors.weight_transport import WeightPlan, join_channel, receive_tensors

    pg = join_channel(host, port, timeout_s, secret=secret)
    plan = WeightPlan.from_dict(plan_dict)
    for _ in range(rounds):
        for _ in receive_tensors(pg, plan):
            pass


def raw_gloo_seconds(named: dict, plan, rounds: int = 3) -> float:
    """Best time to broadcast ``plan``'s buckets to a receiver process that does nothing else."""
    from actors.weight_transport import WeightSender

    sender = WeightSender("127.0.0.1", timeout_s=120)
    host, port, secret = sender.listen("raw")
    proc = mp.get_context("spawn").Process(target=_raw_receiver, args=(host, port, secret, plan.to_dict(), rounds, 120))
    proc.start()
    sender.accept("raw")
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        sender.send(plan, named, ["raw"])
        best = min(best, time.perf_counter() - t0)
    proc.join(timeout=60)
    return best


def _prompts(cfg, data: Path, model: str, n: int):
    from transformers import AutoTokenizer

    from actors.rollout_worker import RolloutRequest
    from actors.vllm_inputs import vllm_prompt
    from videoqa.loader import MediaLoader
    from videoqa.schema import load_samples

    tok = AutoTokenizer.from_pretrained(model)
    samples = [s for s in load_samples(data / "train.json") if s.data_type == "video"][:n]
    return [
        RolloutRequest(it.sample.problem_id, vllm_prompt(tok, it))
        for it in MediaLoader(data, cfg.video.sampling())(samples)
    ]


def _ensure(data: Path, model: Path, big: Path | None):
    from toy.synthetic import make_synthetic
    from toy.tiny_model import TinySize, build_tiny_model

    if not (data / "train.json").is_file():
        make_synthetic(data, n=80, seed=0, progress=False)
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    if big and not (big / "config.json").is_file():  # ~100M parameters, still head_dim 64
        build_tiny_model(
            big, TinySize(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=3072)
        )


def run_bench_rollout(
    root: str | Path = "runs/bench", prompts: int = 48, max_tokens: int = 256, rounds: int = 3, with_100m: bool = True
) -> int:
    import ray
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from actors.engine import start_engine, stop_engine
    from actors.rollout_group import LocalWeightSource, RolloutGroup
    from actors.rollout_worker import request_seed
    from actors.weight_transport import WeightSender
    from cluster.config import Config
    from cluster.config_loader import load_config

    root = Path(root)
    data, tiny, big = root / "data", root / "tiny-model", root / "model-100m"
    _ensure(data, tiny, big if with_100m else None)
    cfg = load_config(Config, "configs/demo.yaml", [f"rollout.max_tokens={max_tokens}"])
    reqs = _prompts(cfg, data, str(tiny), prompts)
    g, rows = cfg.rollout.group_size, []
    fixed = {"ignore_eos": True}  # every response is max_tokens long: both sides do identical work

    from vllm import SamplingParams

    from cluster.services import init_ray

    init_ray(verbose(), num_cpus=4)
    try:
        # both engines stay up and the rounds alternate, so drift in the machine's speed hits both alike
        llm = start_engine(cfg.rollout, str(tiny))
        group = RolloutGroup(cfg.rollout, cfg.transport, str(tiny), num_workers=1)
        params = [
            SamplingParams(
                n=g,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                max_tokens=max_tokens,
                seed=request_seed(cfg.rollout.seed, 0, r.request_id),
                **fixed,
            )
            for r in reqs
        ]
        llm.generate([r.prompt for r in reqs[:4]], params[:4], use_tqdm=False)  # warm-up
        group.generate(reqs[:4], overrides=fixed)
        raw_times, group_times = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            outs = llm.generate([r.prompt for r in reqs], params, use_tqdm=False)
            raw_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = group.generate(reqs, overrides=fixed)
            group_times.append(time.perf_counter() - t0)
        raw_best, best = min(raw_times), min(group_times)
        paired = statistics.median(r / g_ for r, g_ in zip(raw_times, group_times))
        tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
        assert sum(len(x.token_ids) for r in res for x in r.responses) == tokens
        stop_engine(llm)
        del llm
        gc.collect()
        rows.append(("raw vllm.LLM.generate", f"{tokens / raw_best:,.0f} tok/s", ""))
        rows.append(
            (
                "worker group (1 Ray worker)",
                f"{tokens / best:,.0f} tok/s",
                f"{raw_best / best:.2f} of raw (best vs best); median of paired rounds {paired:.2f}",
            )
        )
        for slot in group.slots.values():
            ray.kill(slot.actor, no_restart=True)

        for label, path in (("tiny model", tiny), ("~100M model", big))[: 2 if with_100m else 1]:
            hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
            named = dict(hf.state_dict())
            n_params = sum(t.numel() for t in named.values())
            source = LocalWeightSource(WeightSender(timeout_s=120), bucket_mb=cfg.transport.bucket_mb)
            plan = source.update(named, version=1)
            group = RolloutGroup(cfg.rollout, cfg.transport, str(path), source=source, num_workers=1)
            sync = []
            for v in range(rounds):
                source.update(named, version=v + 2)
                report = group.sync_weights()
                if report.failed:  # its seconds would time a sync that did not happen
                    raise RuntimeError(f"weight sync failed: {report.outcomes}")
                sync.append(report.seconds)
            raw = raw_gloo_seconds(named, plan, rounds)
            mb = plan.nbytes / 2**20
            rows.append(
                (
                    f"weight sync, {label} ({n_params / 1e6:.1f}M params, {mb:.0f} MiB)",
                    f"{min(sync) * 1e3:,.0f} ms",
                    f"{min(sync) / raw:.2f}x raw gloo ({raw * 1e3:,.0f} ms)",
                )
            )
            for slot in group.slots.values():
                ray.kill(slot.actor, no_restart=True)
            del hf, named
            gc.collect()
    finally:
        ray.shutdown()

    print(f"rollout benchmark: {len(reqs)} video prompts x G={g} x {max_tokens} tokens, best of {rounds}")
    width = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"{name:{width}s}  {value:>14s}  {ratio}")
    return 0

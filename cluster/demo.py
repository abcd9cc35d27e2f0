"""The main job. For now: build the tiny model and the synthetic task (once), validate the data, run one grouped
generation through a real vLLM engine on real decoded videos, score it with the reward pool (Ray actors, the
judge, the Redis verdict cache), and log the scored rollouts to Parquet.
Later stages (SFT, PA-GRPO through Ray rollout workers and DeepSpeed) extend this same entry point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster.config import Config


def ensure_tiny_model(cfg: Config) -> Path:
    path = Path(cfg.model.path)
    if not (path / "config.json").is_file():
        from learner.tiny_model import build_tiny_model

        print(f"[demo] building the tiny Qwen2.5-VL at {path}")
        build_tiny_model(path, cfg.tiny_model, seed=cfg.run.seed)
    return path


def ensure_synthetic(cfg: Config) -> Path:
    d = Path(cfg.data.dir)
    if not (d / cfg.data.train_file).is_file():
        from videoqa.synthetic import make_synthetic

        print(f"[demo] writing the synthetic task ({cfg.data.synthetic_n} rows) to {d}")
        make_synthetic(
            d, n=cfg.data.synthetic_n, seed=cfg.data.synthetic_seed, frames=cfg.data.synthetic_frames,
            size=cfg.data.synthetic_size,
        )
    return d


def one_per_type(samples):
    seen, picked = set(), []
    for s in samples:
        if s.problem_type not in seen:
            seen.add(s.problem_type)
            picked.append(s)
    return picked


def run_demo(cfg: Config) -> int:
    from videoqa.loader import MediaLoader
    from videoqa.schema import load_samples
    from videoqa.validate import validate_file

    t_start = time.perf_counter()
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = ensure_tiny_model(cfg)
    data_dir = ensure_synthetic(cfg)
    train_file = data_dir / cfg.data.train_file
    n, problems = validate_file(train_file)
    print(f"[demo] {train_file}: {n} rows, {len(problems)} problems")
    for p in problems[:10]:
        print(f"  {p}")

    loader = MediaLoader(data_dir, cfg.video.sampling(), cfg.data.loader_workers, cfg.data.on_bad_media,
                         cfg.video.image_max_pixels)
    items = list(loader(one_per_type(load_samples(train_file))))
    if loader.skipped:
        print(f"[demo] skipped media: {dict(loader.skipped)}")

    from transformers import AutoTokenizer

    from actors.engine import generate_groups, sampling_params, start_engine
    from actors.vllm_inputs import vllm_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [vllm_prompt(tokenizer, it) for it in items]
    print(f"[demo] starting vLLM ({cfg.rollout.device}) on {model_path}")
    t0 = time.perf_counter()
    llm = start_engine(cfg.rollout, str(model_path), cfg.model.dtype, cfg.run.seed)
    t_engine = time.perf_counter() - t0
    completions, t_gen = generate_groups(llm, prompts, sampling_params(cfg.rollout))
    n_tokens = sum(len(c.token_ids) for c in completions)
    scored = score_completions(cfg, items, completions, str(model_path))

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for c, r in zip(completions, scored.rewards):
        it = items[c.prompt_index]
        rows.append(dict(
            problem_id=it.sample.problem_id, problem_type=it.sample.problem_type, sample_index=c.sample_index,
            text=c.text, token_ids=c.token_ids, finish_reason=c.finish_reason,
            frames=json.dumps(list(it.video.frames.shape)) if it.video is not None else None,
            **{f"reward_{k}": v for k, v in r.as_dict().items()},
        ))
    log = out / "smoke_rollouts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), log)

    print(f"\n{'problem type':16s} {'media':18s} first response (untrained model: random text)")
    for i, it in enumerate(items):
        shape = "x".join(map(str, it.video.frames.shape)) if it.video is not None else "image " + "x".join(map(str, it.image.shape))
        first = next(c for c in completions if c.prompt_index == i)
        print(f"{it.sample.problem_type:16s} {shape:18s} {first.text[:60]!r}")
    print(
        f"\n[demo] {len(items)} prompts x {cfg.rollout.group_size} samples = {len(completions)} responses, "
        f"{n_tokens} tokens in {t_gen:.2f} s ({n_tokens / max(t_gen, 1e-9):.0f} tok/s); engine start {t_engine:.1f} s; "
        f"total {time.perf_counter() - t_start:.1f} s"
    )
    st = scored.stats
    print(
        f"[demo] rewards ({cfg.judge.backend} judge): mean R_P {sum(r.perception for r in scored.rewards) / len(scored.rewards):.2f}, "
        f"mean R_R {sum(r.reasoning for r in scored.rewards) / len(scored.rewards):.2f}; judge outcomes "
        + ", ".join(f"{k[6:]} {v}" for k, v in sorted(st.items()) if k.startswith("judge_") and k != "judge_calls")
        + f"; cache hits {st.get('cache_hits', 0)}, misses {st.get('cache_misses', 0)}"
    )
    print(f"[demo] scored rollouts logged to {log}")
    return 0


def score_completions(cfg: Config, items, completions, tokenizer_path: str):
    """Scores the completions with the reward pool (Ray actors), starting Redis locally if the config says so."""
    import ray

    from actors.reward_pool import RewardPool
    from actors.reward_scorer import ScoreItem
    from cluster.metrics import RewardMetrics

    redis = None
    if cfg.cache.enabled and cfg.cache.start_local:
        from cluster.services import RedisServer

        redis = RedisServer()
        cfg.cache.url = redis.url
    owns_ray = not ray.is_initialized()
    if owns_ray:
        from cluster.services import init_ray

        init_ray()
    try:
        pool = RewardPool(cfg, tokenizer_path=tokenizer_path)
        batch = pool.score([ScoreItem.from_sample(items[c.prompt_index].sample, c.text) for c in completions])
        RewardMetrics().record(batch)
        pool.shutdown()
        return batch
    finally:
        if owns_ray:
            ray.shutdown()
        if redis is not None:
            redis.stop()

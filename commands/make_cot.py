"""`videop2r make-cot`: build process-aware CoT (SFT) data with the paper's three-step funnel, as a Ray job.

The teacher (``model.path``, any Qwen2.5-VL checkpoint) runs in ``rollout.num_workers`` rollout workers (vLLM,
a batch shared by load); the judge is the reward pool's (``judge`` section: oracle, vllm or http), through the
verdict cache. Rows are decoded on the driver, ``cot.batch_rows`` at a time; each finished batch is saved
(``commands.batch_store``), so a rerun skips finished rows and a killed run loses at most the batch in flight. Rows
whose judge gave no verdict, or whose media was missing, are retried by a rerun. The decisions are
``videoqa.cot_funnel``'s.

Output (``cot.out_dir``): ``cot.parquet``, the kept rows with every field SFT reads (``observation``, ``process``,
the solution; media paths made absolute) plus each step's score and verdict (``cot_*`` fields); ``funnel.parquet``,
every row's decision; ``funnel.json`` and the printed funnel table.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from commands.batch_store import BatchStore, file_digest, latest_by, load_batch, write_records
from rewards import PROMPT_VERSION
from videoqa.cot_funnel import Decision, decide, funnel_table, needs_judging, screen
from videoqa.families import family_of
from videoqa.loader import SKIP_REASONS
from videoqa.schema import Sample, load_samples_skipping, resolve_media, write_parquet

PART = "rows"


def _identity(cfg, source: Path) -> dict:
    c = cfg.cot
    return {
        "input": str(source.resolve()),
        "input_digest": file_digest(source),
        "max_rows": c.max_rows,
        "teacher": str(Path(cfg.model.path).resolve()),
        "samples": c.samples,
        "temperature": c.temperature,
        "top_p": c.top_p,
        "max_tokens": c.max_tokens,
        "min_accuracy": c.min_accuracy,
        "seed": cfg.rollout.seed,
        "judge": f"{cfg.judge.backend}:{cfg.judge.model}",
        "judge_prompt": PROMPT_VERSION,
        "frames": asdict(cfg.video.sampling(family_of(cfg.model.path).pixel_factor)),
    }


def run_make_cot(cfg, force: bool = False, verbose: bool = False) -> dict:
    from cluster.preflight import check_before_start
    from cluster.stack import Stack, check_judge_fits

    source = Path(cfg.cot.input)
    if not cfg.cot.input or not source.is_file():
        raise FileNotFoundError(
            f"cot.input {cfg.cot.input!r} is not a file: pass --input FILE (Video-R1 JSON, JSONL or Parquet)"
        )
    check_before_start(cfg, "make-cot")
    samples, malformed = load_samples_skipping(source, cfg.cot.max_rows)
    check_judge_fits(cfg, [s for _, s in samples])
    store = BatchStore(cfg.cot.out_dir, _identity(cfg, source), force)
    finished = {i for i, r in latest_by(store.records(PART), "row").items() if r["final"]}
    todo = [(i, s) for i, s in samples if i not in finished]
    t0 = time.perf_counter()
    judge_stats = Counter()
    if todo:
        with Stack(cfg, verbose) as stack:
            judge_stats = _generate(cfg, stack, store, source, todo)
    summary = _collect(cfg, store, source, samples, malformed)
    summary["seconds"] = time.perf_counter() - t0
    summary["judge_stats"] = {k: v for k, v in sorted(judge_stats.items()) if k.startswith("judge_")}  # this run
    (store.path / "funnel.json").write_text(json.dumps(summary, indent=1))
    width = max(len(k) for k, _ in summary["funnel"])
    print("\n".join(f"  {k:<{width}}  {n:>7d}" for k, n in summary["funnel"]))
    for msg in malformed[:5]:
        print(f"[make-cot] skipped {msg}")
    print(f"[make-cot] {summary['kept']} rows -> {summary['cot_file']}")
    print(f"[make-cot] SFT on them with: {' '.join(summary['sft_overrides'])}")
    return summary


def _generate(cfg, stack, store: BatchStore, source: Path, todo: list[tuple[int, Sample]]) -> Counter:
    """Generates, screens, judges and records ``todo`` batch by batch; returns the reward pool's counters."""
    from tqdm import tqdm

    from actors.reward_pool import RewardPool
    from actors.reward_scorer import ScoreItem
    from actors.rollout_group import RolloutGroup
    from actors.rollout_worker import RolloutRequest
    from actors.vllm_inputs import vllm_prompt
    from videoqa.loader import MediaLoader

    c = cfg.cot
    rollout = RolloutGroup(
        cfg.rollout, cfg.transport, cfg.model.path, cfg.model.dtype, num_workers=cfg.rollout.num_workers
    )
    pool = RewardPool(cfg, tokenizer_path=cfg.model.path)
    loader = MediaLoader(
        source.parent,
        cfg.video.sampling(family_of(cfg.model.path).pixel_factor),
        cfg.data.loader_workers,
        "skip",
        cfg.video.image_max_pixels,
        media_roots=cfg.data.media_roots,
    )
    overrides = {"n": c.samples, "temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens}
    bar = tqdm(total=len(todo), desc="make-cot", unit="row", dynamic_ncols=True)
    kept = no_verdict = 0
    stats = Counter()
    try:
        for start in range(0, len(todo), c.batch_rows):
            batch = todo[start : start + c.batch_rows]
            loaded, failed = load_batch(loader, batch)
            records = [
                {"row": row, "problem_id": s.problem_id, "reason": why, "final": False} for row, s, why in failed
            ]
            rows, loaded = [row for row, _ in loaded], [it for _, it in loaded]
            requests = [RolloutRequest(f"cot:{row}", vllm_prompt(stack.tokenizer, it)) for row, it in zip(rows, loaded)]
            results = rollout.generate(requests, step=0, overrides=overrides)
            candidates = [[screen(it.sample, r.text) for r in res.responses] for it, res in zip(loaded, results)]
            # step 3 only for candidates that passed steps 1 and 2 (the judge is the expensive part)
            to_judge = [
                (k, j)
                for k, cands in enumerate(candidates)
                for j, cand in enumerate(cands)
                if needs_judging(cand, c.min_accuracy)
            ]
            scored = pool.score([ScoreItem.from_sample(loaded[k].sample, candidates[k][j].text) for k, j in to_judge])
            stats += scored.stats
            verdicts = [[None] * len(cands) for cands in candidates]
            for (k, j), reward in zip(to_judge, scored.rewards):
                verdicts[k][j] = reward.verdict
            for row, it, cands, vs in zip(rows, loaded, candidates, verdicts):
                d = decide(cands, vs, c.min_accuracy)
                records.append(_record(row, it.sample, cands, vs, d))
                kept += d.reason == "kept"
                no_verdict += d.reason == "judge_missing"
            store.write(PART, records)
            bar.update(len(batch))
            bar.set_postfix(kept=kept, no_verdict=no_verdict)
    finally:
        bar.close()
        pool.shutdown()
        rollout.shutdown()
    return stats


def _record(row: int, sample: Sample, cands, verdicts, d: Decision) -> dict:
    best = cands[d.index]
    return {
        "row": row,
        "problem_id": sample.problem_id,
        "reason": d.reason,
        "final": d.final,
        "candidate": d.index,
        "passed_template": d.passed[0],
        "passed_accuracy": d.passed[1],
        "passed_judge": d.passed[2],
        "response": best.text,
        "observation": best.observation,
        "think": best.think,
        "answer": best.answer,
        "accuracy": best.accuracy,
        "verdict": verdicts[d.index],
        "candidates": len(cands),
        "candidates_formatted": sum(c.format_ok for c in cands),
    }


def _collect(cfg, store: BatchStore, source: Path, samples: list, malformed: list[str]) -> dict:
    latest = latest_by(store.records(PART), "row")
    decided, skipped, kept = [], Counter({"malformed": len(malformed)}), []
    for i, s in samples:
        r = latest.get(i)
        if r is None:
            skipped["not run"] += 1
        elif r["reason"] in SKIP_REASONS:
            skipped[f"{r['reason']} media"] += 1
        else:
            decided.append(r)
            if r["reason"] == "kept":
                kept.append(_cot_sample(s, r, source, cfg))
    decisions = [
        Decision(r["reason"], r["candidate"], (r["passed_template"], r["passed_accuracy"], r["passed_judge"]))
        for r in decided
    ]
    rows_in = len(samples) + len(malformed)
    out = store.path / "cot.parquet"
    write_parquet(kept, out)
    if latest:
        write_records([latest[i] for i in sorted(latest)], store.path / "funnel.parquet")
    return {
        "input": str(source),
        "teacher": cfg.model.path,
        "judge": f"{cfg.judge.backend}:{cfg.judge.model}",
        "rows_in": rows_in,
        "kept": len(kept),
        "cot_file": str(out),
        "funnel": funnel_table(rows_in, decisions, {k: v for k, v in skipped.items() if v}),
        "retry_hint": "rerun the same command to retry rows whose judge gave no verdict or whose media failed",
        # the kept rows name their media by absolute path in the source dataset's folders, which SFT must allow
        "sft_overrides": [
            f"data.dir={store.path}",
            f"data.cot_file={out.name}",
            "data.media_roots=[" + ",".join(map(str, _media_roots(cfg, source))) + "]",
        ],
    }


def _media_roots(cfg, source: Path) -> list[Path]:
    """The folders the source rows' media may come from: the source file's and ``data.media_roots``."""
    return [source.parent, *map(Path, cfg.data.media_roots)]


def _cot_sample(s: Sample, r: dict, source: Path, cfg) -> Sample:
    """The kept row as an SFT row: the teacher's observation and think, the dataset's own solution."""
    extra = dict(s.extra)
    extra.update(
        cot_response=r["response"],
        cot_accuracy=r["accuracy"],
        cot_verdict="Yes",
        cot_teacher=cfg.model.path,
        cot_source_row=r["row"],
    )
    return Sample(
        s.problem_id,
        s.problem,
        s.data_type,
        s.problem_type,
        s.solution,
        str(resolve_media(s.path, source.parent).resolve()),
        list(s.options),
        s.data_source,
        observation=r["observation"],
        process=r["think"],
        extra=extra,
    )

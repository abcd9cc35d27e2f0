"""Evaluation through the rollout workers (vLLM, never transformers' ``generate``: its M-RoPE positions after a
video differ from vLLM's and the learner's): one response per question with the ``eval`` section's sampling,
scored with ``rewards.eval_score`` (Video-R1's benchmark rules). With a reward pool, the judge also checks each
observation (the perception sufficiency rate, the demo's Yes-rate).

``score_items`` gives one record per question; ``summarize`` turns records into the numbers the demo, the
training stages and ``videop2r eval`` report.
"""

from __future__ import annotations

import math

import numpy as np

from actors.reward_scorer import ScoreItem
from actors.rollout_worker import RolloutRequest
from actors.vllm_inputs import vllm_prompt
from rewards import eval_score, parse_response, predicted_answer, think_answer_mismatch


def score_items(rollout, pool, tokenizer, items, eval_cfg, request_ids: list[str] | None = None) -> list[dict]:
    """Generate one response per loaded sample and score it; ``pool`` None skips the judge (verdict None)."""
    ids = request_ids or [f"eval:{k}:{it.sample.problem_id}" for k, it in enumerate(items)]
    requests = [RolloutRequest(rid, vllm_prompt(tokenizer, it, eval_cfg.prompt)) for rid, it in zip(ids, items)]
    overrides = {
        "n": 1,
        "temperature": eval_cfg.temperature,
        "top_p": eval_cfg.top_p,
        "max_tokens": eval_cfg.max_tokens,
    }
    results = rollout.generate(requests, step=0, overrides=overrides)
    outputs = [r.responses[0].text for r in results]
    verdicts: list[bool | None] = [None] * len(items)
    if pool is not None:
        scored = pool.score([ScoreItem.from_sample(it.sample, text) for it, text in zip(items, outputs)])
        verdicts = [r.verdict for r in scored.rewards]
    records = []
    for it, text, verdict in zip(items, outputs, verdicts):
        s, parsed = it.sample, parse_response(text)
        records.append(
            {
                "problem_id": s.problem_id,
                "problem_type": s.problem_type,
                "data_type": s.data_type,
                "output": text,
                "prediction": predicted_answer(text),
                "score": eval_score(text, s.solution, s.problem_type),
                "mismatch": think_answer_mismatch(text, s.problem_type),
                "verdict": verdict,
                "format_ok": parsed.perception_format and parsed.reasoning_format,
            }
        )
    return records


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), 0.0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def summarize(records: list[dict], judged: bool = True) -> dict:
    """Mean score (with its standard error), by problem type, the think-answer mismatch rate over the rows where it
    can be told, and (when judged) the perception sufficiency rate: the share of rows whose observation the judge
    said suffices (a row without a well-formed observation counts as not sufficient)."""
    scores = [r["score"] for r in records]
    acc, acc_se = _mean_se(scores)
    by_type: dict[str, list[float]] = {}
    for r in records:
        by_type.setdefault(r["problem_type"], []).append(r["score"])
    told = [r["mismatch"] for r in records if r["mismatch"] is not None]
    out = {
        "n": len(records),
        "accuracy": acc,
        "accuracy_se": acc_se,
        "accuracy_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        "rows_by_type": {t: len(v) for t, v in sorted(by_type.items())},
        "format_rate": float(np.mean([r["format_ok"] for r in records])) if records else float("nan"),
        "mismatch_rate": float(np.mean(told)) if told else float("nan"),
        "mismatch_rows": len(told),
        "per_row_accuracy": scores,
    }
    if judged:
        yes = [1.0 if r["verdict"] else 0.0 for r in records]
        out["yes_rate"], out["yes_rate_se"] = _mean_se(yes)
        out["per_row_yes"] = yes
    return out


def evaluate(rollout, pool, tokenizer, items, eval_cfg) -> dict:
    """The demo's and the training stages' held-out measurement: summary numbers plus three example outputs."""
    records = score_items(rollout, pool, tokenizer, items, eval_cfg)
    return {**summarize(records, judged=pool is not None), "examples": [r["output"] for r in records[:3]]}


def paired_gain(before: dict, after: dict, key: str = "per_row_accuracy") -> dict:
    """after - before on the same questions, with the standard error of the paired differences."""
    d = np.array(after[key]) - np.array(before[key])
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return {
        "gain": float(d.mean()),
        "se": se,
        "z": float(d.mean() / se) if se > 0 else float("inf") * np.sign(d.mean()),
    }

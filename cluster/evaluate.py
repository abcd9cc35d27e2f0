"""Held-out evaluation through the rollout workers (vLLM, never transformers' ``generate``: its M-RoPE positions
after a video differ from vLLM's and the learner's): one decoded response per question at ``eval.temperature``
(0 = greedy), scored by the reward pool. Reports mean reasoning accuracy with its standard error, accuracy by
problem type, and the judge's Yes-rate on the observations."""

from __future__ import annotations

import math

import numpy as np

from actors.reward_scorer import ScoreItem
from actors.rollout_worker import RolloutRequest
from actors.vllm_inputs import vllm_prompt


def evaluate(rollout, pool, tokenizer, items, temperature: float = 0.0, max_tokens: int | None = None) -> dict:
    requests = [RolloutRequest(f"eval:{k}:{it.sample.problem_id}", vllm_prompt(tokenizer, it))
                for k, it in enumerate(items)]
    overrides = {"n": 1, "temperature": temperature}
    if max_tokens:
        overrides["max_tokens"] = max_tokens
    results = rollout.generate(requests, step=0, overrides=overrides)
    scored = pool.score([ScoreItem.from_sample(it.sample, r.responses[0].text) for it, r in zip(items, results)])
    acc = np.array([r.acc_r for r in scored.rewards], dtype=float)
    yes = np.array([1.0 if r.verdict else 0.0 for r in scored.rewards])
    by_type: dict[str, list[float]] = {}
    for it, a in zip(items, acc):
        by_type.setdefault(it.sample.problem_type, []).append(float(a))
    return {
        "n": len(items),
        "accuracy": float(acc.mean()),
        "accuracy_se": float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else 0.0,
        "yes_rate": float(yes.mean()),
        "yes_rate_se": float(yes.std(ddof=1) / math.sqrt(len(yes))) if len(yes) > 1 else 0.0,
        "format_rate": float(np.mean([r.form_p * r.form_r for r in scored.rewards])),
        "accuracy_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        "per_row_accuracy": acc.tolist(),
        "per_row_yes": yes.tolist(),
        "examples": [r.responses[0].text for r in results[:3]],
    }


def paired_gain(before: dict, after: dict, key: str = "per_row_accuracy") -> dict:
    """after - before on the same questions, with the standard error of the paired differences."""
    d = np.array(after[key]) - np.array(before[key])
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return {"gain": float(d.mean()), "se": se, "z": float(d.mean() / se) if se > 0 else float("inf") * np.sign(d.mean())}

"""What an experiment tracker (cluster/trackers.py) receives from a step: the ``metrics.jsonl`` row as stable,
namespaced scalars; a few rollouts as readable samples; the resolved config as flat parameters; and the smoothing
the PNG report offers. Pure: no tracker library, Ray or torch here."""

from __future__ import annotations

import json
import math
import re

from rewards.parsing import parse_response

# Row key -> tracker key. The names are part of what users build dashboards on: change them only with a note.
RENAMED = {
    "reward_perception": "reward/perception/total",
    "accuracy_perception": "reward/perception/accuracy",
    "format_perception": "reward/perception/format",
    "length_perception": "reward/perception/length",
    "reward_reasoning": "reward/reasoning/total",
    "accuracy": "reward/reasoning/accuracy",
    "format_reasoning": "reward/reasoning/format",
    "length_reasoning": "reward/reasoning/length",
    "judge_yes_rate": "judge/yes_rate",
    "missing_verdict_frac": "judge/missing_frac",
    "zeroed_perception": "judge/zeroed_perception",
    "response_tokens": "rollout/response_tokens",
    "generated_tokens": "rollout/generated_tokens",
    "generated_tokens_per_s": "rollout/tokens_per_s",
    "staleness_mean": "rollout/staleness_mean",
    "staleness_max": "rollout/staleness_max",
    "overlapped": "rollout/overlapped",
    "weight_version": "rollout/weight_version",
    "flat_groups_frac_perception": "groups/flat_frac_perception",
    "flat_groups_frac_reasoning": "groups/flat_frac_reasoning",
    "trained_tokens_per_s": "learner/tokens_per_s",
    "rollout_workers": "workers/rollout",
    "rollout_workers_ready": "workers/rollout_ready",
    "rollout_workers_desired": "workers/rollout_desired",
    "rollout_worker_restarts": "workers/rollout_restarts",
    "reward_workers": "workers/reward",
    "reward_worker_starts": "workers/reward_starts",
    "reward_chunks_rescored": "workers/reward_chunks_rescored",
    "sync_failed": "sync/failed",
    "sync_updated": "sync/updated",
    "sync_mib": "sync/mib",
}
KEPT = ("time/", "judge/", "cache/", "total/", "accuracy/", "segment_tokens/")  # already namespaced
NOT_SCALARS = {"step", "time", "prompt_ids"}
_UNSAFE = re.compile(r"[^\w./\- ]")  # MLflow's allowed key characters; the same keys in every tracker


def tracker_key(key: str) -> str:
    """The tracker's name for a row key: renamed, kept, or (the learner's statistics: loss, kl, entropy,
    mismatch_kl, grad_norm, lr, ...) under ``learner/``."""
    if key in RENAMED:
        out = RENAMED[key]
    elif key.startswith(KEPT):
        out = key
    else:
        out = f"learner/{key}"
    return _UNSAFE.sub("_", out)


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers under their tracker keys (booleans as 0/1; per-reason counts of skipped media under
    ``data/skipped_media/``); lists, strings and the step itself are left out."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in NOT_SCALARS:
            continue
        if k == "skipped_media" and isinstance(v, dict):
            out.update({_UNSAFE.sub("_", f"data/skipped_media/{r}"): float(n) for r, n in v.items()})
        elif isinstance(v, (bool, int, float)):
            out[tracker_key(k)] = float(v)
    return out


SAMPLE_COLUMNS = (
    "step",
    "prompt_id",
    "problem_type",
    "question",
    "observation",
    "think",
    "answer",
    "r_perception",
    "r_reasoning",
    "acc_p",
    "form_p",
    "len_p",
    "acc_r",
    "form_r",
    "len_r",
    "verdict",
)


def samples(rollouts: list[dict], questions: dict[str, str], n: int) -> list[dict]:
    """Up to ``n`` rollouts to read, one per prompt (its first sample), in the step's order: the question, the
    response split into observation / think / answer, and both rewards with their parts (Eqs. 3-7). ``rollouts``:
    the step's rollout-log rows (``StepBatch.log_rows``); ``questions``: prompt id -> question text."""
    out, seen = [], set()
    for r in rollouts:
        if len(out) >= n:
            break
        if r["prompt_id"] in seen:
            continue
        seen.add(r["prompt_id"])
        parsed = parse_response(r["response"])
        row = {c: r.get(c) for c in SAMPLE_COLUMNS}
        row.update(
            question=questions.get(r["prompt_id"], ""),
            observation=parsed.observation or "",
            think=parsed.think or "",
            answer=parsed.answer or "",
        )
        if row["observation"] == row["think"] == row["answer"] == "":  # unparsable: show what was written
            row["think"] = r["response"]
        out.append(row)
    return out


def samples_markdown(rows: list[dict]) -> str:
    """The samples as a Markdown table (TensorBoard's text panel renders it)."""

    def cell(v) -> str:
        text = f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + "---|" * len(SAMPLE_COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c)) for c in SAMPLE_COLUMNS) + " |\n" for r in rows)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested (already redacted) config as dotted keys -> text, for trackers whose parameters are flat."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased as TensorBoard's smoothing slider (its first points are not pulled
    toward 0); ``weight`` 0 returns the values, 0.9 smooths strongly. Non-finite points are passed through and do
    not enter the average."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight}")
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last, n = last * weight + (1 - weight) * v, n + 1
        out.append(last / (1 - weight**n))
    return out

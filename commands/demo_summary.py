"""The demo's summary from its stages' held-out evaluations: accuracy per stage, the paired gains (on every row and
on the trained types' rows), the RL start's pass@G, and the stages' accuracies for the report's bar panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.config import Config
from cluster.evaluate import paired_gain


def on_rows(ev: dict, mask: list[bool]) -> dict:
    """An evaluation's per-row results on the rows where ``mask`` is true (the trained types' questions)."""
    return {k: [v for v, m in zip(ev[k], mask) if m] for k in ("per_row_accuracy", "per_row_yes") if k in ev}


def gains(before: dict, after: dict, trained: list[bool]) -> dict:
    """Paired after - before: accuracy on every held-out row and on the trained types' rows, and the Yes-rate."""
    out = {
        "accuracy": paired_gain(before, after),
        "accuracy_trained": paired_gain(*(on_rows(e, trained) for e in (before, after))),
    }
    if "per_row_yes" in before and "per_row_yes" in after:
        out["yes_rate"] = paired_gain(before, after, "per_row_yes")
    return out


def summarize(cfg: Config, untrained: dict, rl: dict, sft: dict, out: Path, trained: list) -> dict:
    ev_sft, ev_rl = rl["eval_start"], rl["eval_end"]
    stages = {"untrained": untrained, "sft": ev_sft, cfg.learner.algorithm: ev_rl}
    first = _first_step_pass_at_g(out / cfg.learner.algorithm)
    return {
        "held_out_questions": untrained["n"],
        "algorithm": cfg.learner.algorithm,
        "sft_steps": sft["steps"],
        "sft_stopped_by": sft.get("stopped_by"),
        "sft_validation_checks": sft.get("validation_checks"),
        "rl_steps": rl["steps"],
        "rl_seconds": rl["seconds"],
        "accuracy": {k: v["accuracy"] for k, v in stages.items()},
        "accuracy_se": {k: v["accuracy_se"] for k, v in stages.items()},
        "accuracy_by_type": {k: v["accuracy_by_type"] for k, v in stages.items()},
        "yes_rate": {k: v["yes_rate"] for k, v in stages.items()},
        "mismatch_rate": {k: v["mismatch_rate"] for k, v in stages.items()},
        "trained_types": cfg.demo.trained_types,
        "trained_questions": sum(trained),
        "accuracy_trained": {
            k: float(np.mean(on_rows(v, trained)["per_row_accuracy"] or [np.nan])) for k, v in stages.items()
        },
        "gain_sft": paired_gain(untrained, ev_sft),
        "gain_rl": paired_gain(ev_sft, ev_rl),
        "gain_rl_trained": gains(ev_sft, ev_rl, trained)["accuracy_trained"],
        "gain_yes_rl": paired_gain(ev_sft, ev_rl, "per_row_yes"),
        "rl_start_training_prompts": first,
    }


def _first_step_pass_at_g(run: Path) -> dict:
    """On the first RL step's prompts: mean sampled accuracy and pass@G (some sample fully right)."""
    import pyarrow.parquet as pq

    files = sorted((run / "rollouts").glob("step_*.parquet"))
    if not files:
        return {}
    rows = pq.read_table(files[0]).to_pylist()
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r["acc_r"])
    return {
        "mean_sample_accuracy": sum(r["acc_r"] for r in rows) / len(rows),
        "pass_at_g": sum(max(v) >= 1.0 for v in groups.values()) / len(groups),
        "prompts": len(groups),
    }


def stage_accuracy(summary: dict) -> dict[str, tuple[float, float]]:
    """Each stage's held-out accuracy and standard error, the controls' after them (the report's bar panel)."""
    acc = {k: (v, summary["accuracy_se"][k]) for k, v in summary["accuracy"].items()}
    for name, c in summary.get("controls", {}).items():
        if isinstance(c.get("accuracy"), float):  # a control run (pa_grpo_minus_grpo holds paired gains)
            acc[name] = (c["accuracy"], c.get("accuracy_se", 0.0))
    return acc

"""The demo's console report and its figure: held-out accuracy of each stage with the paired gains, the
trained types' gain, the controls; the RL stage's reward curves next to the stages' held-out accuracy."""

from __future__ import annotations

from pathlib import Path

from commands.demo_summary import stage_accuracy


def print_report(s: dict) -> None:
    acc, se, yes = s["accuracy"], s["accuracy_se"], s["yes_rate"]
    mismatch = s.get("mismatch_rate", {})
    print(
        f"\n[demo] held-out reasoning accuracy ({s['held_out_questions']} questions, greedy), perception Yes-rate, "
        "think-answer mismatch rate:"
    )
    rows = [(k, acc[k], se[k], yes[k], mismatch.get(k)) for k in acc]
    for name, c in (s.get("controls") or {}).items():
        if isinstance(c.get("accuracy"), float):  # a control run (pa_grpo_minus_grpo holds paired gains instead)
            rows.append(
                (f"{name} (control)", c["accuracy"], c.get("accuracy_se"), c["yes_rate"], c.get("mismatch_rate"))
            )
    for name, a, e, y, m in rows:
        err = f" +/- {e:.3f}" if e is not None else ""
        mis = f"   mismatch {m:.3f}" if m is not None and m == m else ""  # nan: no row where it can be told
        print(f"  {name:16s} accuracy {a:.3f}{err}   Yes-rate {y:.3f}{mis}")
    lines = [("SFT - untrained", s["gain_sft"]), ("RL - SFT", s["gain_rl"])]
    if "gain_rl_trained" in s:  # summaries from before the trained-type measurement lack it
        types = ", ".join(s["trained_types"])
        lines.append(
            (f"RL - SFT on the trained types ({types}; {s['trained_questions']} questions)", s["gain_rl_trained"])
        )
    pa_vs = (s.get("controls") or {}).get("pa_grpo_minus_grpo")
    if pa_vs:
        lines += [(f"PA-GRPO - GRPO, {k.replace('_', ' ')}", g) for k, g in pa_vs.items()]
    for name, g in lines:
        print(f"  {name:16s} {g['gain']:+.3f} +/- {g['se']:.3f} (paired; {g['z']:.1f} SE)")
    f = s.get("rl_start_training_prompts") or {}
    if f:
        print(
            f"  at the RL start: pass@G {f['pass_at_g']:.2f} vs mean sampled accuracy {f['mean_sample_accuracy']:.2f}"
        )
    print(f"[demo] done in {s['seconds'] / 60:.1f} min")


def plot_demo(out: Path, summary: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cluster.run_dir import RunDir

    rows = RunDir(out / summary["algorithm"]).metrics()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    for key, label in (
        ("reward_perception", "R_P (perception)"),
        ("reward_reasoning", "R_R (reasoning)"),
        ("accuracy", "accuracy (sampled)"),
        ("judge_yes_rate", "judge Yes-rate"),
    ):
        a.plot(steps, [r[key] for r in rows], label=label)
    a.set_xlabel("RL step")
    a.set_title(f"{summary['algorithm']} on the synthetic task")
    a.legend()
    held_out = stage_accuracy(summary)  # the stages, then the controls
    names = list(held_out)
    b.bar(names, [held_out[k][0] for k in names], yerr=[2 * held_out[k][1] for k in names])
    b.set_ylabel("held-out accuracy (greedy), +/- 2 SE")
    b.set_ylim(0, 1)
    fig.tight_layout()
    path = out / "reward_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

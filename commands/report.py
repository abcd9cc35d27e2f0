"""`videop2r report RUN [RUN ...] --out FILE.png`: the reward curves of one or more training runs, read from their
``metrics.jsonl`` (no Prometheus needed): perception and reasoning rewards, accuracy by problem type, the judge's
Yes-rate, KL to the reference, the mismatch KL between vLLM's and the learner's log-probs, the sampled tokens'
entropy, and step time; ``--smooth`` draws each curve smoothed (TensorBoard's debiased moving average) over its
raw points. Several runs are overlaid (e.g. PA-GRPO and GRPO from the same SFT
checkpoint), each labelled with its folder and algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cluster.tracker_rows import ema

PANELS = (  # (title, metric keys: a prefix ending in "/" stands for every key under it)
    ("perception reward R_P", ("reward_perception",)),
    ("reasoning reward R_R", ("reward_reasoning",)),
    ("accuracy by problem type", ("accuracy/",)),
    ("judge Yes-rate", ("judge_yes_rate",)),
    ("KL to the reference", ("kl",)),
    ("mismatch KL (vLLM vs learner)", ("mismatch_kl",)),
    ("entropy of the sampled tokens", ("entropy",)),
    ("step time (s)", ("time/step",)),
)


HELD_OUT = "held-out accuracy by stage"


class ReportError(ValueError):
    """A run folder or output path the report cannot use; the message names it."""


def run_label(run: Path) -> str:
    config = run / "config.yaml"
    algorithm = ""
    if config.is_file():
        algorithm = (yaml.safe_load(config.read_text()) or {}).get("learner", {}).get("algorithm", "")
    return f"{run.name} ({algorithm})" if algorithm else run.name


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{run} has no metrics.jsonl: name the run.out_dir of a `train` run")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ReportError(f"{path}:{i} is not JSON (a run killed mid-write? its last line)") from None
    if not rows:
        raise ReportError(f"{path} has no steps yet")
    return rows


def series(rows: list[dict], keys: tuple[str, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) for each metric the keys stand for (rows that lack it are left out)."""
    names: list[str] = []
    for key in keys:
        if key.endswith("/"):
            names += sorted({k for r in rows for k in r if k.startswith(key)})
        else:
            names.append(key)
    out = {}
    for name in names:
        pts = [(r["step"], float(r[name])) for r in rows if isinstance(r.get(name), (int, float))]
        if pts:
            out[name] = ([s for s, _ in pts], [v for _, v in pts])
    return out


def write_report(
    runs: list[str | Path],
    out: str | Path,
    force: bool = False,
    smooth: float = 0.0,
    held_out: dict[str, tuple[float, float]] | None = None,
) -> dict[str, dict]:
    """Draws the report; returns what was plotted: panel title -> line label -> (steps, values), the values
    smoothed where ``smooth`` > 0 (the raw points are drawn faintly behind). ``held_out`` (stage -> held-out
    accuracy and its standard error, as the demo measures them) adds a bar panel beside the curves."""
    out = Path(out)
    if not 0 <= smooth < 1:
        raise ReportError(f"--smooth {smooth} must be in [0, 1): 0 draws the raw points, 0.6-0.9 smooths")
    if out.suffix.lower() != ".png":
        raise ReportError(f"--out {out} must be a .png file")
    if out.exists() and not force:
        raise ReportError(f"{out} exists: choose another --out, or pass --force to replace it")
    loaded = [(run_label(Path(r)), read_metrics(Path(r))) for r in runs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(24 if held_out else 20, 8))
    grid = fig.add_gridspec(2, 5 if held_out else 4)
    axes = [fig.add_subplot(grid[r, c]) for r in range(2) for c in range(4)]
    plotted: dict[str, dict] = {}
    if held_out:
        plotted[HELD_OUT] = dict(held_out)
        bars = fig.add_subplot(grid[:, 4])
        names = list(held_out)
        bars.bar(names, [held_out[k][0] for k in names], yerr=[2 * held_out[k][1] for k in names], capsize=4)
        bars.set_ylim(0, 1)
        bars.set_title(HELD_OUT)
        bars.set_ylabel("greedy accuracy, +/- 2 SE")
    for ax, (title, keys) in zip(axes, PANELS):
        lines = plotted.setdefault(title, {})
        for label, rows in loaded:
            for name, (steps, values) in series(rows, keys).items():
                line = label if len(keys) == 1 and not keys[0].endswith("/") else f"{label}: {name.split('/', 1)[-1]}"
                if smooth:
                    raw = ax.plot(steps, values, alpha=0.25)[0]
                    values = ema(values, smooth)
                    ax.plot(steps, values, label=line, color=raw.get_color())
                else:
                    ax.plot(steps, values, label=line)
                lines[line] = (steps, values)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        if lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp_{out.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(out)
    return plotted

"""The main job, on a 2-core CPU box with the real stack: build the tiny model and the synthetic task (only inside
the demo's own folder), measure held-out accuracy of the untrained model, SFT, measure, PA-GRPO (Ray actors, vLLM
rollout workers, the reward pool with the oracle judge, the DeepSpeed learner as a Ray actor, weight broadcast,
Redis, the metrics endpoint), measure; write ``summary.json`` and a reward-curve PNG.

Each stage resumes (its own run folder under ``run.out_dir``), so a rerun continues where an interrupted one
stopped. ``demo.controls=true`` adds the honest controls: GRPO from the same SFT checkpoint with the same seeds, and
SFT continued for the wall time the RL stage took.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cluster.config import Config
from cluster.evaluate import evaluate, paired_gain
from cluster.preflight import check_policy_model, check_port
from videoqa.families import FAMILIES
from cluster.run_dir import RunExistsError
from cluster.stack import Dataset, Stack
from commands.demo_report import plot_demo, print_report


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


DEMO_FILE = "demo.json"  # the settings the demo in this folder runs with
# What does not change what the demo computes: where it is, whether it resumes, the exporter, the experiment
# trackers, and the controls (asked for on a finished demo, they are added to it).
NOT_RESULTS = (
    "run.out_dir",
    "run.resume",
    "metrics",
    "demo.controls",
    "trainer.loggers",
    "trainer.log_samples_every",
    "trainer.log_samples",
)


def demo_settings(cfg: Config) -> dict:
    """The settings that decide the demo's results, flat (``section.key``), secrets redacted."""
    from cluster.config_loader import redact

    flat: dict = {}

    def walk(tree: dict, prefix: str) -> None:
        for k, v in tree.items():
            key = f"{prefix}{k}"
            if any(key == n or key.startswith(n + ".") for n in NOT_RESULTS):
                continue
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(redact(cfg.model_dump(mode="json")), "")
    return flat


def check_folder(cfg: Config, out: Path, force: bool) -> None:
    """Before anything starts: ``out`` is new, empty, or this demo's own folder with the same settings; a user's
    folder, or a demo made with other settings, is refused unless ``force`` (which runs there anyway, starting the
    stages over)."""
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"run.out_dir {out} is a file: choose a folder")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    mine = out / DEMO_FILE
    if not mine.is_file():
        if (out / "sft").is_dir() or (out / "summary.json").is_file():
            return  # a demo folder from before its settings were recorded: resumed as it always was
        raise RunExistsError(
            f"{out} holds files that are not a demo's: choose a new or empty run.out_dir, or pass "
            "--force to run the demo there anyway"
        )
    old, new = json.loads(mine.read_text()), demo_settings(cfg)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        named = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunExistsError(
            f"{out} holds a demo run with other settings ({named}): choose another run.out_dir, "
            "or pass --force to start it over there"
        )


def ensure_fixtures(cfg: Config, out: Path) -> None:
    """The tiny model and the synthetic task are generated only inside the demo's folder, never over a path the
    user named elsewhere (there a missing model or dataset is an error)."""
    model, data = Path(cfg.model.path), Path(cfg.data.dir)
    if not (model / "config.json").is_file():
        if not _inside(model, out):
            raise FileNotFoundError(
                f"model.path {model} has no model; the demo builds the tiny model only under run.out_dir ({out})"
            )
        from toy.tiny_model import build_tiny_model

        print(f"[demo] building the tiny {FAMILIES[cfg.tiny_model.family].name} at {model}")
        build_tiny_model(model, cfg.tiny_model, seed=cfg.run.seed)
    if not (data / cfg.data.train_file).is_file():
        if not _inside(data, out):
            raise FileNotFoundError(
                f"data.dir {data} has no {cfg.data.train_file}; the demo writes the synthetic "
                f"task only under run.out_dir ({out})"
            )
        from toy.synthetic import make_synthetic

        d = cfg.demo
        print(f"[demo] writing the synthetic task to {data}")
        make_synthetic(
            data,
            n=cfg.data.synthetic_n,
            seed=cfg.data.synthetic_seed,
            n_eval=d.eval_rows,
            frames=cfg.data.synthetic_frames,
            size=cfg.data.synthetic_size,
            style=d.style,
            mix=d.mix,
            n_val=d.val_rows,
            eval_mix=d.eval_mix,
        )


def stage_config(cfg: Config, out_dir: Path, **updates) -> Config:
    """A copy of the demo's config for one stage (its own run folder)."""
    c = cfg.model_copy(deep=True)
    c.run.out_dir = str(out_dir)
    for dotted, value in updates.items():
        section, key = dotted.split("__")
        setattr(getattr(c, section), key, value)
    return c


class Evaluator:
    """A rollout worker and a reward pool for the demo's measurements outside RL: the untrained model, and the
    validation checks that decide when SFT stops (the worker then receives the SFT learner's weights)."""

    def __init__(self, cfg: Config, stack: Stack):
        from actors.reward_pool import RewardPool
        from actors.rollout_group import RolloutGroup

        self.cfg, self.stack = cfg, stack
        self.rollout = RolloutGroup(cfg.rollout, cfg.transport, cfg.model.path, cfg.model.dtype, num_workers=1)
        self.pool = RewardPool(cfg, tokenizer_path=cfg.model.path)
        self.checks: list[dict] = []

    def __call__(self, items: list) -> dict:
        return evaluate(self.rollout, self.pool, self.stack.tokenizer, items, self.cfg.eval)

    def sft_stop(self, val_items: list, threshold: float):
        def should_stop(learner, step: int) -> str | None:
            self.rollout.source = learner  # the SFT learner's current weights, then greedy on validation rows
            learner.publish(step)
            self.rollout.sync_weights()
            acc = self(val_items)["accuracy"]
            self.checks.append({"step": step, "val_accuracy": acc})
            return f"validation accuracy {acc:.2f} >= {threshold}" if acc >= threshold else None

        return should_stop

    def close(self) -> None:
        self.pool.shutdown()
        self.rollout.shutdown()


def model_eval(cfg: Config, stack: Stack, items: list) -> dict:
    ev = Evaluator(cfg, stack)
    try:
        return ev(items)
    finally:
        ev.close()


def run_demo(cfg: Config, force: bool = False, verbose: bool = False) -> int:
    from commands.stages import run_train

    t_start = time.perf_counter()
    out = Path(cfg.run.out_dir).resolve()
    check_folder(cfg, out, force)
    done = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    if done and not force and ("controls" in done or not cfg.demo.controls):
        print(f"[demo] {out}/summary.json exists: the demo is complete (pass --force to run it again)")
        print_report(done)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_FILE).write_text(json.dumps(demo_settings(cfg), indent=1, sort_keys=True))
    ensure_fixtures(cfg, out)
    # a model.path given elsewhere: what it holds, before anything starts
    check_policy_model(cfg.model.path, device=cfg.rollout.device)
    check_port(cfg.metrics.host, cfg.metrics.port, "metrics.port")
    with Stack(cfg, verbose) as stack:
        held_out = Dataset(cfg, cfg.data.eval_file, sampling=cfg.eval.sampling(cfg.video))
        items = [it for _, it in held_out.load(list(range(min(len(held_out), cfg.eval.max_rows or len(held_out)))))]
        sft_done = out / "sft" / "summary.json"
        if force or not sft_done.is_file() or not (out / "eval_untrained.json").is_file():
            sft_stage(cfg, stack, out, items, force)
        sft = json.loads(sft_done.read_text())
        ev_untrained = json.loads((out / "eval_untrained.json").read_text())
        t_rl = time.perf_counter()
        rl = run_train(
            stage_config(cfg, out / cfg.learner.algorithm, model__path=sft["hf"]),
            force=force,
            stack=stack,
            evaluate_on=items,
        )
        rl_seconds = time.perf_counter() - t_rl
        # the held-out rows of the types the demo trains: where RL's effect is measured (all rows are reported)
        trained = [it.sample.problem_type in cfg.demo.trained_types for it in items]
        summary = summarize(cfg, ev_untrained, rl, sft, out, time.perf_counter() - t_start, trained)
        if done and not force:  # a finished demo asked for its controls: keep its measured times
            summary.update(seconds=done["seconds"], rl_seconds=done["rl_seconds"])
            rl_seconds = done["rl_seconds"]
        if cfg.demo.controls:
            summary["controls"] = run_controls(cfg, stack, out, sft, items, rl, trained, rl_seconds, force)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_demo(out, summary)
    from commands.report import write_report

    runs = [out / cfg.learner.algorithm] + ([out / "grpo"] if (out / "grpo" / "metrics.jsonl").is_file() else [])
    write_report(runs, out / "report.png", force=True)  # the demo's own folder: its previous report is replaced
    print_report(summary)
    return 0


def sft_stage(cfg: Config, stack: Stack, out: Path, items: list, force: bool) -> dict:
    """Untrained measurement, then SFT until validation accuracy shows the skill (or sft.steps)."""
    from commands.stages import run_sft

    evaluator = Evaluator(cfg, stack)
    try:
        cached = out / "eval_untrained.json"
        if not cached.is_file():
            print(f"[demo] evaluating the untrained model on {len(items)} held-out questions")
            cached.write_text(json.dumps(evaluator(items)))
        d, stop = cfg.demo, None
        val_file = Path(cfg.data.dir) / "val.json"
        if d.sft_stop_accuracy > 0 and val_file.is_file():
            val = Dataset(cfg, "val.json")
            stop = evaluator.sft_stop([it for _, it in val.load(list(range(len(val))))], d.sft_stop_accuracy)
        sft = run_sft(
            stage_config(cfg, out / "sft"), force=force, stack=stack, should_stop=stop, check_every=d.sft_check_every
        )
        sft["validation_checks"] = evaluator.checks
        (out / "sft" / "summary.json").write_text(json.dumps(sft, indent=1))
        return sft
    finally:
        evaluator.close()


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


def run_controls(
    cfg: Config,
    stack: Stack,
    out: Path,
    sft: dict,
    items: list,
    rl: dict,
    trained: list,
    rl_seconds: float,
    force: bool,
) -> dict:
    """GRPO from the same SFT checkpoint and seeds, compared row by row with PA-GRPO; SFT continued for the RL
    stage's wall time."""
    from commands.stages import run_sft, run_train

    grpo = run_train(
        stage_config(cfg, out / "grpo", model__path=sft["hf"], learner__algorithm="grpo"),
        force=force,
        stack=stack,
        evaluate_on=items,
    )
    per_step = sft["seconds"] / max(1, sft["steps"])
    extra = max(1, int(rl_seconds / per_step))
    import shutil

    if not (out / "sft-more" / "checkpoints").is_dir():  # continue from SFT's last checkpoint (optimizer included)
        shutil.copytree(out / "sft" / "checkpoints", out / "sft-more" / "checkpoints")
    more = run_sft(stage_config(cfg, out / "sft-more", sft__steps=sft["steps"] + extra), force=force, stack=stack)
    ev_more = model_eval(stage_config(cfg, out / "sft-more", model__path=more["hf"]), stack, items)
    ev_sft = grpo["eval_start"]
    return {
        "grpo": {
            "accuracy": grpo["eval_end"]["accuracy"],
            "yes_rate": grpo["eval_end"]["yes_rate"],
            "mismatch_rate": grpo["eval_end"]["mismatch_rate"],
            "seconds": grpo["seconds"],
            "gain_over_sft": paired_gain(ev_sft, grpo["eval_end"]),
            "gains_over_sft": gains(ev_sft, grpo["eval_end"], trained),
        },
        # the paper's comparison: PA-GRPO - GRPO on the same questions, from the same SFT checkpoint and seeds
        "pa_grpo_minus_grpo": gains(grpo["eval_end"], rl["eval_end"], trained),
        "sft_more": {
            "extra_steps": extra,
            "accuracy": ev_more["accuracy"],
            "yes_rate": ev_more["yes_rate"],
            "gain_over_sft": paired_gain(ev_sft, ev_more),
        },
    }


def summarize(cfg: Config, untrained: dict, rl: dict, sft: dict, out: Path, seconds: float, trained: list) -> dict:
    ev_sft, ev_rl = rl["eval_start"], rl["eval_end"]
    stages = {"untrained": untrained, "sft": ev_sft, cfg.learner.algorithm: ev_rl}
    first = _first_step_pass_at_g(out / cfg.learner.algorithm)
    return {
        "seconds": seconds,
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

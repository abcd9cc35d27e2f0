"""The main job, on a 2-core CPU box with the real stack: build the tiny model and the synthetic task (only inside
the demo's own folder), measure held-out accuracy of the untrained model, SFT, measure, PA-GRPO (Ray actors, vLLM
rollout workers, the reward pool with the oracle judge, the DeepSpeed learner as a Ray actor, weight broadcast,
Redis, the metrics endpoint), measure; write ``summary.json`` and a reward-curve PNG.

Each stage resumes (its own run folder under ``run.out_dir``), so a rerun continues where an interrupted one
stopped. The GRPO control (``demo.grpo_control``, on by default) trains GRPO from the same SFT checkpoint with the same
seeds and compares it with PA-GRPO row by row; ``demo.controls=true`` adds SFT continued for the RL stage's wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster.config import Config
from cluster.evaluate import evaluate, paired_gain
from cluster.preflight import check_policy_model, check_port
from videoqa.families import FAMILIES
from cluster.run_dir import RunExistsError
from cluster.stack import Dataset, Stack
from commands.demo_report import plot_demo, print_report
from commands.demo_summary import gains, stage_accuracy, summarize


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
    "demo.grpo_control",
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
    if done and not force and not controls_missing(cfg, done):
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
        summary = summarize(cfg, ev_untrained, rl, sft, out, trained)
        if done and not force:  # a finished demo asked for its controls: keep its RL stage's measured time
            summary["rl_seconds"] = rl_seconds = done["rl_seconds"]
        controls = {} if force or not done else dict(done.get("controls") or {})  # a finished demo's are kept
        for name in controls_missing(cfg, None if force else done):
            if name == "grpo":
                controls.update(grpo_control(cfg, stack, out, sft, items, rl, trained, force))
            else:
                controls.update(sft_more_control(cfg, stack, out, sft, items, rl, rl_seconds, force))
        if controls:
            summary["controls"] = controls
        # the whole demo's wall time, its controls included (over both invocations when they were added later)
        summary["seconds"] = time.perf_counter() - t_start + (done["seconds"] if done and not force else 0.0)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_demo(out, summary)
    from commands.report import write_report

    runs = [out / cfg.learner.algorithm] + ([out / "grpo"] if "grpo" in summary.get("controls", {}) else [])
    # the demo's own folder: its previous report is replaced
    write_report(runs, out / "report.png", force=True, held_out=stage_accuracy(summary))
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


def grpo_control(cfg: Config, stack: Stack, out: Path, sft: dict, items: list, rl: dict, trained: list, force: bool):
    """GRPO from the same SFT checkpoint and seeds, compared row by row with PA-GRPO on the same questions (the
    paper's comparison): accuracy, on the trained types, the perception Yes-rate; each one's mismatch rate."""
    from commands.stages import run_train

    grpo = run_train(
        stage_config(cfg, out / "grpo", model__path=sft["hf"], learner__algorithm="grpo"),
        force=force,
        stack=stack,
        evaluate_on=items,
    )
    ev_sft = grpo["eval_start"]
    return {
        "grpo": {
            "accuracy": grpo["eval_end"]["accuracy"],
            "accuracy_se": grpo["eval_end"]["accuracy_se"],
            "yes_rate": grpo["eval_end"]["yes_rate"],
            "mismatch_rate": grpo["eval_end"]["mismatch_rate"],
            "seconds": grpo["seconds"],
            "gain_over_sft": paired_gain(ev_sft, grpo["eval_end"]),
            "gains_over_sft": gains(ev_sft, grpo["eval_end"], trained),
        },
        "pa_grpo_minus_grpo": gains(grpo["eval_end"], rl["eval_end"], trained),
    }


def sft_more_control(cfg: Config, stack: Stack, out: Path, sft: dict, items: list, rl: dict, rl_seconds: float, force):
    """SFT continued from its last checkpoint (optimizer included) for the RL stage's wall time."""
    import shutil

    from commands.stages import run_sft

    per_step = sft["seconds"] / max(1, sft["steps"])
    extra = max(1, int(rl_seconds / per_step))
    if not (out / "sft-more" / "checkpoints").is_dir():
        shutil.copytree(out / "sft" / "checkpoints", out / "sft-more" / "checkpoints")
    more = run_sft(stage_config(cfg, out / "sft-more", sft__steps=sft["steps"] + extra), force=force, stack=stack)
    ev_more = model_eval(stage_config(cfg, out / "sft-more", model__path=more["hf"]), stack, items)
    return {
        "sft_more": {
            "extra_steps": extra,
            "accuracy": ev_more["accuracy"],
            "accuracy_se": ev_more["accuracy_se"],
            "yes_rate": ev_more["yes_rate"],
            "gain_over_sft": paired_gain(rl["eval_start"], ev_more),
        }
    }


def controls_missing(cfg: Config, done: dict | None) -> list[str]:
    """The controls the settings ask for that a finished demo's summary lacks (all asked for when none is done)."""
    have = (done or {}).get("controls") or {}
    asked = (["grpo"] if cfg.demo.grpo_control else []) + (["sft_more"] if cfg.demo.controls else [])
    return [c for c in asked if c not in have]

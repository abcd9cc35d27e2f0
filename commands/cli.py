"""`videop2r`: the command line. Each subcommand is a thin wrapper; the work lives in the packages.

Commands that take a run config accept ``--config FILE`` and dotted overrides after it, e.g.
``videop2r demo --config configs/demo.yaml rollout.group_size=4``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from actors.redaction import redact_url
from cluster.config_loader import ConfigError
from commands.args import add_config_args, add_run_args, at_least, config_from_args
from commands.data_files import (
    OutputExistsError,
    cmd_convert_data,
    cmd_make_synthetic,
    cmd_make_tiny_model,
    cmd_validate_data,
)
from videoqa.families import FAMILIES


def cmd_show_config(args) -> int:
    from cluster.config_loader import dump_config

    print(dump_config(config_from_args(args)), end="")
    return 0


def _quiet_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="[%(name)s] %(message)s")


def cmd_demo(args) -> int:
    from commands.demo import run_demo

    _quiet_logging(args.verbose)
    return run_demo(config_from_args(args), force=args.force, verbose=args.verbose)


def cmd_sft(args) -> int:
    from commands.stages import run_sft

    _quiet_logging(args.verbose)
    run_sft(config_from_args(args), force=args.force, verbose=args.verbose)
    return 0


def cmd_train(args) -> int:
    from commands.stages import run_train

    _quiet_logging(args.verbose)
    summary = run_train(config_from_args(args), force=args.force, verbose=args.verbose)
    if not summary.get("stopped_early"):
        print(f"[train] {summary['steps']} steps ({summary['algorithm']}); model written to {summary.get('hf')}")
    return 0


def _flag_overrides(args, mapping: dict[str, str]) -> None:
    """Command-line flags become dotted overrides (after the config file's values, before explicit overrides)."""
    import json

    extra = [
        f"{key}={json.dumps(getattr(args, flag))}"
        for flag, key in mapping.items()
        if getattr(args, flag) not in (None, [], False)
    ]
    args.overrides = extra + list(args.overrides)


def cmd_eval(args) -> int:
    from commands.eval import run_eval

    _quiet_logging(args.verbose)
    if args.bench:
        args.bench = [str(Path(b).resolve()) for b in args.bench]
    _flag_overrides(
        args,
        {
            "bench": "eval.benchmarks",
            "out": "eval.out_dir",
            "prompt": "eval.prompt",
            "model": "model.path",
            "judge": "eval.judge",
        },
    )
    run_eval(config_from_args(args), force=args.force, verbose=args.verbose)
    return 0


def cmd_make_cot(args) -> int:
    from commands.make_cot import run_make_cot

    _quiet_logging(args.verbose)
    if args.input:
        args.input = str(Path(args.input).resolve())
    _flag_overrides(args, {"input": "cot.input", "out": "cot.out_dir", "teacher": "model.path"})
    run_make_cot(config_from_args(args), force=args.force, verbose=args.verbose)
    return 0


def cmd_scale(args) -> int:
    from cluster.control import ControlPlane
    from cluster.run_dir import RunDir

    control = RunDir(args.run).control()
    if not control.get("redis_url"):
        raise FileNotFoundError(f"{args.run}: the run has no control plane (Redis) to scale through")
    import redis

    password = os.environ.get(control.get("password_env") or "") or None  # the variable the run named, if any
    plane = ControlPlane(control["redis_url"], control["run_id"], password=password, timeout_s=5)
    try:
        most = (state := plane.state() or {}).get("max_rollout_workers")  # the run's own bound, as it reported it
        if most is not None and args.rollout_workers > most:
            raise ConfigError(
                f"--rollout-workers {args.rollout_workers} is above the run's rollout.max_workers={most}: "
                "the run would refuse it (restart it with a larger rollout.max_workers)"
            )
        plane.set_desired_workers(args.rollout_workers)
    except redis.RedisError as e:
        raise FileNotFoundError(
            f"the run's control plane at {redact_url(control['redis_url'])} is not reachable "
            f"({type(e).__name__}): is the run still going?"
        ) from None
    print(
        f"{control['run_id']}: rollout workers {state.get('rollout_workers', '?')} -> {args.rollout_workers} "
        "(applied at the next step boundary)"
    )
    return 0


def cmd_report(args) -> int:
    from commands.report import write_report

    plotted = write_report(args.runs, args.out, force=args.force, smooth=args.smooth)
    lines = sum(len(v) for v in plotted.values())
    print(f"{args.out}: {len(args.runs)} run(s), {lines} curves")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videop2r",
        description="Process-aware RL fine-tuning (VideoP2R / PA-GRPO) of Qwen2.5-VL on Ray, vLLM and DeepSpeed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="the main job: tiny model + synthetic task, evaluate, SFT, evaluate, PA-GRPO, "
        "evaluate; summary.json and a reward-curve PNG",
    )
    add_run_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sft", help="stage 1: SFT on the process-aware CoT rows; writes run.out_dir/hf")
    add_run_args(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("train", help="stage 2: PA-GRPO (or learner.algorithm=grpo) from model.path, the SFT model")
    add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="score a checkpoint on benchmark files in the Video-R1 evaluation format "
        "(defaults: the paper's settings); resumes when rerun",
    )
    p.add_argument("--model", default=None, help="the checkpoint (a Hugging Face folder; default model.path)")
    p.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="FILE",
        help="a benchmark file (JSON, JSONL or Parquet; media paths relative to it); repeat for several",
    )
    p.add_argument("--out", default=None, help="output folder (default eval.out_dir)")
    p.add_argument(
        "--prompt",
        choices=("process", "video-r1"),
        default=None,
        help="process: the observation/think/answer prompt (default); video-r1: Video-R1's think/answer "
        "prompt, for numbers that compare with theirs",
    )
    p.add_argument("--judge", action="store_true", help="also judge each observation (perception sufficiency rate)")
    add_run_args(p, "start over in an output folder that holds records made with other settings (they are deleted)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "make-cot",
        help="build process-aware CoT (SFT) rows with the paper's funnel: teacher "
        "generation, answer check, judge check; resumes when rerun",
    )
    p.add_argument("--input", default=None, help="Video-R1 rows (JSON, JSONL or Parquet; default cot.input)")
    p.add_argument("--out", default=None, help="output folder (default cot.out_dir)")
    p.add_argument("--teacher", default=None, help="the teacher checkpoint (default model.path)")
    add_run_args(p, "start over in an output folder that holds records made with other settings (they are deleted)")
    p.set_defaults(func=cmd_make_cot)

    p = sub.add_parser("scale", help="change a running `train`'s rollout worker count (at its next step boundary)")
    p.add_argument("--run", required=True, help="the run's out_dir")
    p.add_argument("--rollout-workers", type=at_least(1), required=True)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("report", help="reward curves of training runs (overlaid) from their metrics.jsonl, as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a train run's out_dir; several are overlaid")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--smooth", type=float, default=0.0, help="moving-average weight in [0, 1), as TensorBoard's slider")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("make-synthetic", help="write the synthetic video QA task (all five problem types)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=at_least(1), default=200, help="training rows (default 200)")
    p.add_argument("--n-eval", type=at_least(1), default=None, help="evaluation rows (default max(5, n/4))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=at_least(2), default=16, help="frames per video (default 16, at 8 fps; >= 2)")
    p.add_argument("--size", type=at_least(28), default=112, help="frame side in pixels (default 112; >= 28)")
    p.add_argument(
        "--style",
        choices=("varied", "demo"),
        default="varied",
        help="varied: several small shapes (default); demo: one large shape, fixed options (learnable)",
    )
    p.add_argument(
        "--mix",
        default=None,
        metavar="TYPE=W,...",
        help='training-row weights per problem type, e.g. "multiple choice=6,OCR=1,free-form=1,numerical=1,'
        'regression=1" (default: equal, round-robin); the eval split always has all five equally',
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (its files are replaced)")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("make-tiny-model", help="build a small random Qwen2.5-VL or Qwen3-VL (tiny_model section)")
    p.add_argument("--out", required=True, help="output folder (Hugging Face format)")
    p.add_argument(
        "--shape",
        choices=("tiny", "3b-slice", "7b-slice", "qwen3-vl-8b-slice"),
        default="tiny",
        help="tiny: the tiny_model section's sizes (default); 3b-slice / 7b-slice / qwen3-vl-8b-slice: "
        "Qwen2.5-VL-3B / -7B's or Qwen3-VL-8B's exact widths with 2 decoder layers and 4 vision blocks "
        "(about 2.3 / 6.7 / 6.7 GB in float32)",
    )
    p.add_argument("--family", choices=tuple(FAMILIES), help="the tiny model's family (tiny_model.family)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (its files are replaced)")
    add_config_args(p)
    p.set_defaults(func=cmd_make_tiny_model)

    p = sub.add_parser("validate-data", help="report every bad row of a dataset file; exit 1 if any")
    p.add_argument("file", help="JSON, JSONL or Parquet file in the Video-R1 schema")
    p.add_argument("--root", default=None, help="folder the rows' paths are relative to (default: the file's)")
    p.add_argument("--no-media", action="store_true", help="check the schema only, do not open videos/images")
    p.add_argument(
        "--media-root",
        action="append",
        default=[],
        help="a folder besides --root that rows' media may come from (repeatable; as data.media_roots)",
    )
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("convert-data", help="convert a Video-R1 JSON/JSONL file to Parquet")
    p.add_argument("file")
    p.add_argument("--out", default=None, help="output .parquet (default: beside the input)")
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the input)")
    p.set_defaults(func=cmd_convert_data)

    p = sub.add_parser("show-config", help="print the resolved config (after overrides) as YAML")
    add_config_args(p)
    p.set_defaults(func=cmd_show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.run_dir import RunExistsError
    from videoqa.schema import RowError
    from videoqa.video import MediaError

    from actors.judges import JudgeAuthError
    from commands.report import ReportError

    args = build_parser().parse_args(argv)
    if argv is None and args.func in (cmd_demo, cmd_sft, cmd_train, cmd_eval, cmd_make_cot):
        from cluster.reaper import start_reaper

        start_reaper()  # run as a program: what it starts (Ray, engines, redis) ends with it, even on a SIGKILL
    try:
        from cluster.secrets_file import load_secrets_file

        names = load_secrets_file()  # deploy/submit.sh --secrets-dir: the job's secrets, read once, file deleted
        if names:
            print(f"[secrets] {', '.join(names)} read from the job's secrets file (deleted)", file=sys.stderr)
        return args.func(args)
    except JudgeAuthError as e:  # raised in a reward actor, it arrives wrapped: its own message is the line
        print(f"error: {getattr(e, 'cause', None) or e}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, RowError, MediaError, RunExistsError, OutputExistsError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - an actor's failure (a host lost, a rank that raised): one line, not Ray's traceback
        from cluster.services import ray_error_line

        line = ray_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

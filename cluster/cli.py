"""`videop2r`: the command line. Each subcommand is a thin wrapper; the work lives in the packages.

Commands that take a run config accept ``--config FILE`` and dotted overrides after it, e.g.
``videop2r demo --config configs/demo.yaml rollout.group_size=4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config_loader import ConfigError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML run config (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. rollout.num_workers=2")


def _config(args):
    from cluster.config import Config
    from cluster.config_loader import load_config

    return load_config(Config, args.config, args.overrides)


def cmd_make_synthetic(args) -> int:
    from videoqa.synthetic import make_synthetic

    written = make_synthetic(
        args.out, n=args.n, seed=args.seed, n_eval=args.n_eval, frames=args.frames, size=args.size, progress=not args.quiet
    )
    for split, path in written.items():
        print(f"{split:6s} {path}")
    return 0


def cmd_make_tiny_model(args) -> int:
    from learner.tiny_model import build_tiny_model

    cfg = _config(args)
    out = build_tiny_model(args.out, cfg.tiny_model, seed=args.seed)
    print(f"tiny Qwen2.5-VL written to {out}")
    return 0


def cmd_validate_data(args) -> int:
    from videoqa.validate import validate_file

    n, problems = validate_file(args.file, root=args.root, check_media=not args.no_media)
    for p in problems:
        print(p)
    bad = len({p.row for p in problems})
    print(f"{args.file}: {n} rows, {bad} bad", file=sys.stderr)
    return 1 if problems else 0


def cmd_convert_data(args) -> int:
    from videoqa.schema import load_samples, write_parquet

    samples = load_samples(args.file)
    out = args.out or str(Path(args.file).with_suffix(".parquet"))
    write_parquet(samples, out)
    print(f"{len(samples)} rows -> {out}")
    return 0


def cmd_show_config(args) -> int:
    from cluster.config_loader import dump_config

    print(dump_config(_config(args)), end="")
    return 0


def cmd_demo(args) -> int:
    from cluster.demo import run_demo

    return run_demo(_config(args))


def cmd_bench_decode(args) -> int:
    from cluster.bench_decode import run_bench_decode

    return run_bench_decode(args.data, files=args.files, repeat=args.repeat, nframes=args.nframes, size=args.size)


def cmd_bench_rewards(args) -> int:
    from cluster.bench_rewards import run_bench_rewards

    return run_bench_rewards(args.data, args.model, n=args.n)


def cmd_bench_rollout(args) -> int:
    from cluster.bench_rollout import run_bench_rollout

    return run_bench_rollout(args.root, prompts=args.prompts, max_tokens=args.max_tokens, rounds=args.rounds)


def cmd_bench_learner(args) -> int:
    from cluster.bench_learner import run_bench_learner

    return run_bench_learner(args.root, rounds=args.rounds, model=args.model, zero_stage=args.zero_stage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videop2r",
        description="Process-aware RL fine-tuning (VideoP2R / PA-GRPO) of Qwen2.5-VL on Ray, vLLM and DeepSpeed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: tiny model + synthetic data, then generation through vLLM")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("make-synthetic", help="write the synthetic video QA task (all five problem types)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=200, help="training rows (default 200)")
    p.add_argument("--n-eval", type=int, default=None, help="evaluation rows (default max(5, n/4))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=16, help="frames per video (default 16, at 8 fps)")
    p.add_argument("--size", type=int, default=112, help="frame side in pixels (default 112)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("make-tiny-model", help="build a small random Qwen2.5-VL (sizes from the tiny_model section)")
    p.add_argument("--out", required=True, help="output folder (Hugging Face format)")
    p.add_argument("--seed", type=int, default=0)
    _add_config_args(p)
    p.set_defaults(func=cmd_make_tiny_model)

    p = sub.add_parser("validate-data", help="report every bad row of a dataset file; exit 1 if any")
    p.add_argument("file", help="JSON, JSONL or Parquet file in the Video-R1 schema")
    p.add_argument("--root", default=None, help="folder the rows' paths are relative to (default: the file's)")
    p.add_argument("--no-media", action="store_true", help="check the schema only, do not open videos/images")
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("convert-data", help="convert a Video-R1 JSON/JSONL file to Parquet")
    p.add_argument("file")
    p.add_argument("--out", default=None, help="output .parquet (default: beside the input)")
    p.set_defaults(func=cmd_convert_data)

    p = sub.add_parser("show-config", help="print the resolved config (after overrides) as YAML")
    _add_config_args(p)
    p.set_defaults(func=cmd_show_config)

    p = sub.add_parser("bench-decode", help="benchmark: data-loader decode throughput vs raw decord")
    p.add_argument("--data", default="runs/bench/data", help="synthetic data folder (made if missing)")
    p.add_argument("--files", type=int, default=60, help="videos to decode per pass")
    p.add_argument("--repeat", type=int, default=3, help="passes per method (best is reported)")
    p.add_argument("--nframes", type=int, default=16)
    p.add_argument("--size", type=int, default=336, help="frame side of the generated benchmark videos")
    p.set_defaults(func=cmd_bench_decode)

    p = sub.add_parser("bench-rewards", help="benchmark: reward throughput, cache latency, pool scaling")
    p.add_argument("--data", default="runs/bench/data", help="synthetic data folder (made if missing)")
    p.add_argument("--model", default="runs/bench/tiny-model", help="tokenizer for token counts (made if missing)")
    p.add_argument("--n", type=int, default=2000, help="rollouts per measurement")
    p.set_defaults(func=cmd_bench_rewards)

    p = sub.add_parser("bench-rollout", help="benchmark: worker-group throughput vs raw vLLM; weight sync vs raw gloo")
    p.add_argument("--root", default="runs/bench", help="folder for the benchmark's data and models (made if missing)")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="repetitions per measurement (best is reported)")
    p.set_defaults(func=cmd_bench_rollout)

    p = sub.add_parser("bench-learner", help="benchmark: PA-GRPO vs GRPO step time, log-prob throughput")
    p.add_argument("--root", default="runs/bench", help="folder for the benchmark's data and model (made if missing)")
    p.add_argument("--model", default=None, help="a Qwen2.5-VL folder (default: the tiny model under --root)")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=cmd_bench_learner)
    return parser


def main(argv: list[str] | None = None) -> int:
    from videoqa.schema import RowError
    from videoqa.video import MediaError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, RowError, MediaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks {decode,rewards,rollout,learner,train,eval,faults,capacity,sync,multihost,shapes,gpu}``: each prints a table (see the modules' docstrings).

Benchmarks are development tools, not part of the training system's command line; each builds the synthetic
data and tiny model it needs under ``runs/bench`` on first use.
"""

from __future__ import annotations

import argparse
import sys


def cmd_decode(args) -> int:
    from benchmarks.decode import run_bench_decode

    return run_bench_decode(args.data, files=args.files, repeat=args.repeat, nframes=args.nframes, size=args.size)


def cmd_rewards(args) -> int:
    from benchmarks.rewards import run_bench_rewards

    return run_bench_rewards(args.data, args.model, n=args.n)


def cmd_rollout(args) -> int:
    from benchmarks.rollout import run_bench_rollout

    return run_bench_rollout(
        args.root, prompts=args.prompts, max_tokens=args.max_tokens, rounds=args.rounds, with_100m=not args.tiny_only
    )


def cmd_learner(args) -> int:
    from benchmarks.learner import run_bench_learner

    return run_bench_learner(
        args.root,
        rounds=args.rounds,
        model=args.model,
        zero_stage=args.zero_stage,
        wide_blocks=args.wide_blocks,
        wide_frames=args.wide_frames,
        wide_group=args.wide_group,
    )


def cmd_train(args) -> int:
    from benchmarks.train import run_bench_train

    return run_bench_train(args.root, steps=args.steps, prompts=args.prompts, sft_steps=args.sft_steps)


def cmd_eval(args) -> int:
    from benchmarks.eval import run_bench_eval

    return run_bench_eval(args.root, rows=args.rows, max_tokens=args.max_tokens, teacher=args.teacher, data=args.data)


def cmd_faults(args) -> int:
    from benchmarks.faults import run_bench_faults

    return run_bench_faults(args.root, sft_steps=args.sft_steps, chunk_timeout_s=args.chunk_timeout)


def cmd_capacity(args) -> int:
    from benchmarks.capacity import run_bench_capacity

    return run_bench_capacity(args.model, args.gpu, args.learner_gpus, args.rollout_gpus, args.judge_gpus, args.steps)


def cmd_sync(args) -> int:
    from benchmarks.sync import run_bench_sync

    return run_bench_sync(args.mb, args.rounds, tuple(args.receivers))


def cmd_multihost(args) -> int:
    from benchmarks.multihost import run_bench_multihost

    return run_bench_multihost(args.mb, args.rounds, tuple(args.receivers))


def cmd_shapes(args) -> int:
    from benchmarks.shapes import run_bench_shapes

    return run_bench_shapes(
        args.root,
        tuple(args.shapes),
        tuple(args.zero_stages),
        args.frames,
        args.size,
        args.max_pixels,
        args.group_size,
        args.max_tokens,
        args.bucket_mb,
        args.set,
        args.verbose,
        args.json,
        args.text_layers,
        args.train_embeddings,
        args.apart,
        args.force,
        tuple(args.weights),
        args.lora_rank,
    )


def cmd_gpu(args) -> int:
    from benchmarks.gpu import run_bench_gpu

    return run_bench_gpu(
        args.out,
        device=args.device,
        force=args.force,
        rows=args.rows,
        checkpointing=args.checkpointing,
        verbose=args.verbose,
        frames=args.frames,
        pixels=args.pixels,
        group=args.group,
        resp_min=args.resp_min,
        resp_max=args.resp_max,
        micro_batch=args.micro_batch,
        steps=args.steps,
        budget_s=args.budget_s,
        layers=args.layers,
        work_dir=args.work_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="VideoP2R benchmarks (each prints a table)."
    )
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    p = sub.add_parser("decode", help="data-loader decode throughput vs raw decord")
    p.add_argument("--data", default="runs/bench/data", help="synthetic data folder (made if missing)")
    p.add_argument("--files", type=int, default=60, help="videos to decode per pass")
    p.add_argument("--repeat", type=int, default=3, help="passes per method (best is reported)")
    p.add_argument("--nframes", type=int, default=16)
    p.add_argument("--size", type=int, default=336, help="frame side of the generated benchmark videos")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("rewards", help="reward throughput, cache latency, pool scaling")
    p.add_argument("--data", default="runs/bench/data", help="synthetic data folder (made if missing)")
    p.add_argument("--model", default="runs/bench/tiny-model", help="tokenizer for token counts (made if missing)")
    p.add_argument("--n", type=int, default=2000, help="rollouts per measurement")
    p.set_defaults(func=cmd_rewards)

    p = sub.add_parser("rollout", help="worker-group throughput vs raw vLLM; weight sync vs raw gloo")
    p.add_argument("--root", default="runs/bench", help="folder for the benchmark's data and models (made if missing)")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="repetitions per measurement (best is reported)")
    p.add_argument(
        "--tiny-only",
        action="store_true",
        help="time the weight sync of the tiny model only (not also a ~100M-parameter one)",
    )
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser(
        "learner", help="PA-GRPO vs GRPO step time, log-prob throughput, vision features once per group vs every pass"
    )
    p.add_argument("--root", default="runs/bench", help="folder for the benchmark's data and model (made if missing)")
    p.add_argument("--model", default=None, help="a Qwen2.5-VL folder (default: the tiny model under --root)")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--wide-blocks",
        type=int,
        default=8,
        help="vision blocks of the 3B-width slice for the vision-features rows (0: tiny model only)",
    )
    p.add_argument("--wide-frames", type=int, default=4, help="frames per video for the 3B-width slice (even)")
    p.add_argument("--wide-group", type=int, default=8, help="rollouts G of the 3B-width slice's prompt")
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("train", help="RL step-time split, driver overhead, synchronous vs overlapped, PA-GRPO vs GRPO")
    p.add_argument("--root", default="runs/bench", help="folder for the benchmark's data, model and runs")
    p.add_argument("--steps", type=int, default=10, help="measured steps per run (after one warm-up step)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--sft-steps", type=int, default=150, help="SFT steps of the model the RL runs start from")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluation throughput with 1 vs 2 rollout workers; make-cot throughput")
    p.add_argument(
        "--root", default="runs/bench", help="folder for the synthetic data and tiny model (made if missing)"
    )
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--teacher", default=None, help="a trained model (e.g. runs/demo/sft/hf; default: the random tiny one)"
    )
    p.add_argument("--data", default=None, help="its data folder (e.g. runs/demo/data)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("faults", help="a short RL run with one injected fault per step: lost, duplicated, counted")
    p.add_argument(
        "--root", default="runs/bench", help="folder for the synthetic data and tiny model (made if missing)"
    )
    p.add_argument(
        "--sft-steps",
        type=int,
        default=150,
        help="SFT steps of the model the RL run starts from (shared with `train` under the same --root)",
    )
    p.add_argument(
        "--chunk-timeout",
        type=float,
        default=30.0,
        help="rollout.chunk_timeout_s: how long the hung worker's chunk waits before it goes to another worker",
    )
    p.set_defaults(func=cmd_faults)

    p = sub.add_parser("capacity", help="a capacity model on GPUs: memory per GPU, step-time split, sync vs workers")
    p.add_argument("--model", choices=("3b", "7b", "72b"), default="7b")
    p.add_argument("--gpu", choices=("a100", "h100", "h200"), default="a100")
    p.add_argument("--learner-gpus", type=int, default=4)
    p.add_argument("--rollout-gpus", type=int, default=4)
    p.add_argument("--judge-gpus", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.set_defaults(func=cmd_capacity)

    p = sub.add_parser("sync", help="weight sync time vs receivers: per-worker channels vs one broadcast group")
    p.add_argument("--mb", type=float, default=256, help="model size in MiB (default 256)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--receivers", type=int, nargs="+", default=[1, 2, 4])
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "multihost",
        help="weight sync with receivers on separate hosts (network namespaces; root) vs "
        "on one host: per-worker channels vs one group",
    )
    p.add_argument("--mb", type=float, default=64, help="model size in MiB (default 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--receivers", type=int, nargs="+", default=[1, 2, 4])
    p.set_defaults(func=cmd_multihost)

    p = sub.add_parser(
        "shapes",
        help="Qwen2.5-VL-3B/7B and Qwen3-VL-8B widths (cut in depth) end to end on the CPU: "
        "vLLM vs learner log-probs, bucketed sync, ZeRO-2/3 steps, peak memory per role",
    )
    p.add_argument("--root", default="runs/bench/shapes", help="folder for the models and data (made if missing)")
    p.add_argument(
        "--shapes", nargs="+", default=["3b-slice"], choices=["tiny", "3b-slice", "7b-slice", "qwen3-vl-8b-slice"]
    )
    p.add_argument("--zero-stages", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    p.add_argument("--text-layers", type=int, default=2, help="decoder layers of the slice (released: 36 / 28)")
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="train the embeddings and LM head too (default: frozen, to fit 24 GB beside vLLM)",
    )
    p.add_argument("--frames", type=int, default=16, help="frames of the video prompt (paper: 16)")
    p.add_argument("--size", type=int, default=308, help="side of the generated video's frames")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=128 * 28 * 28,
        help="pixels per frame (paper: 128x28x28; Qwen3-VL's 128 tokens a frame: 131072, 128x32x32)",
    )
    p.add_argument("--group-size", type=int, default=4, help="G responses to the prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per response")
    p.add_argument("--bucket-mb", type=float, default=64, help="weight sync bucket size (transport.bucket_mb)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every row, e.g. learner.beta=0 (repeatable)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=["full"],
        choices=["full", "lora-merged", "lora-adapter"],
        help="what the learner trains and a sync sends: every trainable weight (full fine-tuning), or "
        "LoRA with the adapted layers merged (learner.lora.sync=merged) or the adapters alone (=adapter)",
    )
    p.add_argument("--lora-rank", type=int, default=64, help="learner.lora.rank of the lora-* rows (alpha 2x)")
    p.add_argument(
        "--apart",
        action="store_true",
        help="the worker samples and stops before the learner starts "
        "(for a shape whose roles do not fit the machine at once: no sync, no after-update check)",
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file (a new one, or --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--verbose", action="store_true", help="vLLM's and Ray's INFO logs on the console")
    p.set_defaults(func=cmd_shapes)

    p = sub.add_parser(
        "gpu",
        help="the learner on one GPU: RL step tokens/s, memory, MFU (3B; 7B extrapolated), "
        "bf16 vs float32 log-probs, chunked LM head vs full logits",
    )
    p.add_argument("--out", required=True, help="folder for gpu-check.md, gpu-check.json and logs/")
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the same code on 3B-width slices at small sizes (not GPU figures)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing gpu-check.md in --out")
    p.add_argument("--rows", default="3b,7b,precision,lmhead", help="comma-separated subset of 3b,7b,precision,lmhead")
    p.add_argument(
        "--checkpointing",
        choices=("off", "on", "both"),
        default="both",
        help="learner.gradient_checkpointing for the RL-step rows",
    )
    p.add_argument("--frames", type=int, help="frames per video (default 16 on cuda, 2 on cpu)")
    p.add_argument("--pixels", type=int, help="pixels per frame in units of 28x28 (default 128 on cuda, 4 on cpu)")
    p.add_argument("--group", type=int, help="rollouts G of the prompt (default 8 on cuda, 2 on cpu)")
    p.add_argument("--resp-min", type=int, help="shortest response in tokens (default 600 on cuda, 24 on cpu)")
    p.add_argument("--resp-max", type=int, help="longest response in tokens (default 1024 on cuda, 48 on cpu)")
    p.add_argument("--micro-batch", type=int, help="learner.micro_batch_size (default 4 on cuda, 2 on cpu)")
    p.add_argument("--steps", type=int, help="timed RL steps after the warm-up (default 2 on cuda, 1 on cpu)")
    p.add_argument("--layers", type=int, help="cpu: decoder layers of the 3B-width slice (default 1)")
    p.add_argument(
        "--budget-s", type=float, help="start no measurement after this many seconds (default 420 on cuda, none on cpu)"
    )
    p.add_argument("--work-dir", help="where the random models are written (default: the system's temp folder)")
    p.add_argument("--verbose", action="store_true", help="show DeepSpeed's and transformers' output")
    p.set_defaults(func=cmd_gpu)
    for name, p in sub.choices.items():  # every benchmark takes --verbose (shapes and gpu say what it shows there)
        if name not in ("shapes", "gpu"):
            p.add_argument("--verbose", action="store_true", help="vLLM's, Ray's and DeepSpeed's INFO output too")
    return parser


def _quiet(verbose: bool) -> None:
    """The table is what a person sees: vLLM's, Ray's, DeepSpeed's and transformers' INFO lines and progress
    bars stay off the console (in this process, and in every process it starts) unless ``--verbose``."""
    import logging
    import os

    from benchmarks import VERBOSE_ENV
    from cluster.services import QUIET_ENV

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        logging.basicConfig(level=logging.INFO)
        return
    os.environ.update(QUIET_ENV)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("vllm").setLevel(logging.ERROR)  # what vLLM logs before it configures its own logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Arguments shared by the commands: a run config with dotted overrides, --force and --verbose, bounded integers."""

from __future__ import annotations

import argparse

from cluster.config_paths import place_paths


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML run config (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. rollout.num_workers=2")


def add_run_args(
    p: argparse.ArgumentParser,
    force_help: str = "start over in a run.out_dir that already holds a run (its checkpoints and logs are deleted)",
) -> None:
    add_config_args(p)
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--verbose", action="store_true", help="show vLLM's, Ray's and DeepSpeed's INFO output too")


def config_from_args(args):
    from cluster.config import Config
    from cluster.config_loader import load_config

    family = [f"tiny_model.family={args.family}"] if getattr(args, "family", None) else []  # --family: shorthand
    return place_paths(load_config(Config, args.config, args.overrides + family))


def at_least(low: int):
    """An argparse type: an integer >= low (a bad value is argparse's one-line usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse

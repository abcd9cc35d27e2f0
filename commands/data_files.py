"""The commands that write or check data and model files: `make-synthetic`, `make-tiny-model`, `validate-data`,
`convert-data`. They write only into a new or empty folder, or with --force."""

from __future__ import annotations

import sys
from pathlib import Path

from commands.args import config_from_args


class OutputExistsError(RuntimeError):
    """A command would write over something the user owns."""


def writable_folder(out: str, force: bool) -> None:
    """Generators write only into a new or empty folder (``--force``: into a non-empty one, replacing their files)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"--out {p} is a file, not a folder: choose a folder path")
    if p.is_dir() and any(p.iterdir()) and not force:
        raise OutputExistsError(f"--out {p} is not empty: choose a new folder, or pass --force to write over its files")


def cmd_make_synthetic(args) -> int:
    from toy.synthetic import make_synthetic, parse_mix

    try:
        mix = parse_mix(args.mix) if args.mix else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    writable_folder(args.out, args.force)
    written = make_synthetic(
        args.out,
        n=args.n,
        seed=args.seed,
        n_eval=args.n_eval,
        frames=args.frames,
        size=args.size,
        style=args.style,
        mix=mix,
        progress=not args.quiet,
    )
    for split, path in written.items():
        print(f"{split:6s} {path}")
    return 0


def cmd_make_tiny_model(args) -> int:
    from toy.tiny_model import build_tiny_model
    from videoqa.families import family

    cfg = config_from_args(args)
    writable_folder(args.out, args.force)
    if args.shape == "tiny":
        out = build_tiny_model(args.out, cfg.tiny_model, seed=args.seed)
        print(f"tiny {family(cfg.tiny_model.family).name} written to {out}")
        return 0
    from toy.shaped_model import build_shaped_model

    out = build_shaped_model(args.out, args.shape, seed=args.seed)
    print(f"random model of shape {args.shape} written to {out}")
    return 0


def cmd_validate_data(args) -> int:
    from videoqa.validate import validate_file

    n, problems = validate_file(args.file, root=args.root, check_media=not args.no_media, media_roots=args.media_root)
    for p in problems:
        print(p)
    bad = len({p.row for p in problems})
    print(f"{args.file}: {n} rows, {bad} bad", file=sys.stderr)
    return 1 if problems else 0


def cmd_convert_data(args) -> int:
    from videoqa.schema import load_samples, write_parquet

    out = Path(args.out or Path(args.file).with_suffix(".parquet"))
    if out.resolve() == Path(args.file).resolve():
        raise OutputExistsError(f"--out {out} is the input file: choose another output path")
    if out.exists() and not args.force:
        raise OutputExistsError(f"{out} exists: choose another --out, or pass --force to replace it")
    samples = load_samples(args.file)
    tmp = out.with_name(f".tmp_{out.name}")  # written whole, then renamed: a failed write leaves no half file
    write_parquet(samples, tmp)
    tmp.replace(out)
    print(f"{len(samples)} rows -> {out}")
    return 0

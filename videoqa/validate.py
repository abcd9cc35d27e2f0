"""Checks a dataset file row by row: schema, and that each row's video or image exists and decodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from videoqa.schema import outside_roots, read_rows, resolve_media, row_problems
from videoqa.video import FRAME_FACTOR, MAX_RATIO


@dataclass
class Problem:
    row: str  # the row's problem_id, or its index when it has none
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


def probe_media(path: Path, data_type: str) -> str | None:
    """Why the file cannot be used, or None. Opens it with the same decoders training uses (cheaply)."""
    if not path.is_file():
        return f"{data_type} not found: {path}"
    try:
        if data_type == "video":
            import decord

            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            if len(vr) < FRAME_FACTOR:
                return f"unusable video {path}: it has {len(vr)} frame(s); at least {FRAME_FACTOR} are needed"
            height, width = vr.get_batch([len(vr) - 1]).shape[1:3]  # a truncated file often fails at its end
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
                width, height = im.size
    except Exception as e:  # noqa: BLE001 - decord raises its own error types; any failure here means the file is unusable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"corrupt {data_type} {path}: {msg[:160]}"
    if min(height, width) <= 0 or max(height, width) / min(height, width) > MAX_RATIO:  # the loader refuses it
        return f"unusable {data_type} {path}: frame {height}x{width} has an aspect ratio over {MAX_RATIO}"
    return None


def validate_file(
    path: str | Path, root: str | Path | None = None, check_media: bool = True, media_roots=()
) -> tuple[int, list[Problem]]:
    """(number of rows, problems). Media paths are resolved against ``root`` (default: the file's folder) and must
    lie in it or in one of ``media_roots`` (as the loader requires, ``data.media_roots``)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rows = read_rows(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rid = str(row.get("problem_id", f"#{i}")) if isinstance(row, dict) else f"#{i}"
        reasons = row_problems(row)
        if isinstance(row, dict) and "problem_id" in row:
            if rid in seen:
                reasons.append("duplicate problem_id")
            seen.add(rid)
        if check_media and isinstance(row, dict) and row.get("path") and row.get("data_type") in ("video", "image"):
            media = resolve_media(str(row["path"]), root)
            if outside_roots(media, (root, *media_roots)):
                why = f"{media} is outside {root} and the media roots (the loader skips it as 'outside')"
            else:
                why = probe_media(media, row["data_type"])
            if why:
                reasons.append(why)
        problems += [Problem(rid, r) for r in reasons]
    if not rows:
        problems.append(Problem("-", f"{path} has no rows"))
    return len(rows), problems

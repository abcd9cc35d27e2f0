"""Dataset rows in the Video-R1 / VideoP2R schema, and their JSON <-> Parquet conversion.

A released row looks like::

    {"problem_id": 7, "problem": "...", "data_type": "video", "problem_type": "multiple choice",
     "options": ["A. left", "B. right", ...], "solution": "<answer>B</answer>",
     "path": "./videos/x.mp4", "data_source": "..."}

SFT (CoT) rows also carry ``observation`` and ``process`` (the think text). Fields we do not know are kept in
``extra`` so that a round trip through Parquet loses nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rewards.accuracy import PROBLEM_TYPES, to_number
from rewards.accuracy import strip_answer_tags as solution_text

DATA_TYPES = ("video", "image")
REQUIRED_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution", "path")
_KNOWN = set(REQUIRED_FIELDS) | {"options", "data_source", "observation", "process", "extra"}
_OPTION_RE = re.compile(r"^\s*([A-Z])[.):]")


class RowError(ValueError):
    """A dataset row that cannot be used; the message names the row and the reason."""


@dataclass
class Sample:
    problem_id: str
    problem: str
    data_type: str
    problem_type: str
    solution: str
    path: str
    options: list[str] = field(default_factory=list)
    data_source: str = ""
    observation: str | None = None
    process: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The solution without its ``<answer>`` tags."""
        return solution_text(self.solution)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def option_letters(options: list[str]) -> list[str]:
    """The letters of options written as ``"A. text"`` (or ``A)`` / ``A:``); a malformed option gives ``""``."""
    out = []
    for opt in options:
        m = _OPTION_RE.match(str(opt))
        out.append(m.group(1) if m else "")
    return out


def row_problems(row: Any) -> list[str]:
    """Everything wrong with one raw row, as short reasons (an empty list means the row is usable).

    Checks the schema only; whether the video exists and decodes is ``videoqa.validate``'s job.
    """
    if not isinstance(row, dict):
        return [f"row is a {type(row).__name__}, expected a JSON object"]
    problems = [f"missing field '{f}'" for f in REQUIRED_FIELDS if row.get(f) in (None, "")]
    ptype = row.get("problem_type")
    if ptype is not None and ptype not in PROBLEM_TYPES:
        problems.append(f"unknown problem_type {ptype!r} (expected one of {', '.join(PROBLEM_TYPES)})")
    dtype = row.get("data_type")
    if dtype is not None and dtype not in DATA_TYPES:
        problems.append(f"unknown data_type {dtype!r} (expected video or image)")
    options = row.get("options") or []
    if not isinstance(options, list):
        problems.append("options is not a list")
        options = []
    solution = row.get("solution")
    if isinstance(solution, str) and solution and not solution_text(solution):
        problems.append("empty answer in solution")
    elif ptype in ("numerical", "regression") and isinstance(solution, (str, int, float)) and solution != "":
        if to_number(solution_text(str(solution))) is None:  # the accuracy rewards compare numbers
            problems.append(f"{ptype} solution {solution_text(str(solution))!r} is not a number")
    if ptype == "multiple choice":
        letters = option_letters(options)
        if not options:
            problems.append("multiple choice without options")
        elif "" in letters:
            problems.append(f"option {options[letters.index('')]!r} does not start with a letter like 'A.'")
        elif isinstance(row.get("solution"), str) and solution_text(row["solution"]) not in letters:
            problems.append(
                f"solution {solution_text(row['solution'])!r} matches no option (options are {', '.join(letters)})"
            )
    return problems


def sample_from_row(row: dict[str, Any], row_id: Any = None) -> Sample:
    """A ``Sample`` from a raw row; a ``RowError`` naming the row and every problem if it is malformed."""
    problems = row_problems(row)
    if problems:
        rid = row.get("problem_id", row_id) if isinstance(row, dict) else row_id
        raise RowError(f"row {rid}: " + "; ".join(problems))
    extra = dict(row.get("extra") or {})
    extra.update({k: v for k, v in row.items() if k not in _KNOWN})
    return Sample(
        problem_id=str(row["problem_id"]),
        problem=str(row["problem"]),
        data_type=row["data_type"],
        problem_type=row["problem_type"],
        solution=str(row["solution"]),
        path=str(row["path"]),
        options=[str(o) for o in (row.get("options") or [])],
        data_source=str(row.get("data_source") or ""),
        observation=row.get("observation"),
        process=row.get("process"),
        extra=extra,
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw rows from a JSON list, JSON Lines or Parquet file (suffix in any case). A file that is none of these
    (binary, corrupt, a folder) is a RowError naming it, never a traceback."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if path.is_dir():
        raise RowError(f"{path} is a folder: name the dataset file inside it (JSON, JSONL or Parquet)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise RowError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for r in rows:  # `extra` is stored as a JSON string: Parquet needs one schema for every row
            if isinstance(r.get("extra"), str):
                r["extra"] = json.loads(r["extra"])
        return rows
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RowError(
            f"{path}: not a text file (JSON or JSONL rows are UTF-8; Parquet files end in .parquet)"
        ) from None
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RowError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise RowError(f"{path}: expected a JSON list of rows, got a {type(data).__name__}")
    return data


def load_samples(path: str | Path) -> list[Sample]:
    """Validated samples; the first malformed row raises (use ``videop2r validate-data`` to list them all)."""
    return [sample_from_row(r, i) for i, r in enumerate(read_rows(path))]


def load_samples_skipping(path: str | Path, max_rows: int | None = None) -> tuple[list[tuple[int, Sample]], list[str]]:
    """(row index, sample) for every usable row of the first ``max_rows``, and one message per malformed row
    (batch jobs count those and go on; ``load_samples`` stops at the first)."""
    samples, malformed = [], []
    for i, row in enumerate(read_rows(path)[:max_rows]):
        try:
            samples.append((i, sample_from_row(row, i)))
        except RowError as e:
            malformed.append(f"{Path(path).name}: {e}")
    return samples, malformed


def write_parquet(samples: list[Sample], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for s in samples:
        r = s.to_row()
        r["extra"] = json.dumps(r["extra"], sort_keys=True)
        rows.append(r)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_json(samples: list[Sample], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        r = s.to_row()
        extra = r.pop("extra")
        r.update(extra)  # released files keep extra fields at the top level
        rows.append({k: v for k, v in r.items() if v is not None})
    path.write_text(json.dumps(rows, indent=1))
    return path


def resolve_media(path: str, root: str | Path) -> Path:
    """Video-R1 paths are relative to the dataset file's folder (often written ``./Folder/x.mp4``)."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def outside_roots(path: str | Path, roots) -> bool:
    """Whether ``path`` lies outside every folder of ``roots``: a row naming ``/etc/...`` or climbing out with
    ``..`` would make the run read files its dataset's author chose. Judged on the path as written (``..``
    collapsed, symlinks not followed): links inside a dataset folder are its owner's, and a hub snapshot's files are
    links into the cache's blobs."""
    p = os.path.normpath(os.path.abspath(path))
    for root in roots:
        r = os.path.normpath(os.path.abspath(root))
        if p == r or p.startswith(r.rstrip(os.sep) + os.sep):
            return False
    return True

"""The output folder of a resumable batch job (``videop2r eval``, ``videop2r make-cot``).

    out_dir/job.json              what the records were made with (model, prompt, sampling, input files' hashes)
    out_dir/parts/<name>/part_NNNNNN.parquet   one file per finished batch, written under a temporary name, renamed

A rerun with the same settings reads the parts back and continues with the rows that have no record yet, so a
killed job loses at most the batch in flight. Other settings in a folder that holds records are refused unless
``--force`` (which deletes the old records); a non-empty folder that is not such an output is always refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from cluster.run_dir import RunExistsError


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class BatchStore:
    def __init__(self, out_dir: str | Path, identity: dict, force: bool = False):
        self.path = Path(os.path.abspath(out_dir))  # symlinks kept: other hosts open this path as given
        self.parts = self.path / "parts"
        job = self.path / "job.json"
        if self.path.is_dir() and any(self.path.iterdir()) and not job.is_file():
            raise RunExistsError(
                f"{self.path} holds files that are not this command's output: choose an empty or new output folder"
            )
        if self.parts.is_dir() and any(self.parts.rglob("part_*.parquet")):
            old = json.loads(job.read_text()) if job.is_file() else {}
            if force:
                shutil.rmtree(self.parts)
            elif old != identity:
                diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                raise RunExistsError(
                    f"{self.path} holds records made with other settings ({', '.join(diff)}): pass "
                    "--force to delete them and start over, or choose another output folder"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        job.write_text(json.dumps(identity, indent=1, sort_keys=True))

    def records(self, name: str) -> list[dict]:
        """Every record of ``name``, oldest part first."""
        import pyarrow.parquet as pq

        out: list[dict] = []
        for part in sorted((self.parts / name).glob("part_*.parquet")):
            out.extend(pq.read_table(part).to_pylist())
        return out

    def write(self, name: str, records: list[dict]) -> Path:
        folder = self.parts / name
        folder.mkdir(parents=True, exist_ok=True)
        n = max((int(p.stem.split("_")[1]) for p in folder.glob("part_*.parquet")), default=-1) + 1
        return write_records(records, folder / f"part_{n:06d}.parquet")


def write_records(records: list[dict], path: Path) -> Path:
    """Records as Parquet, written under a temporary name and renamed. Every key of any record becomes a column
    (pyarrow would take the columns from the first record alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in records for k in r))
    tmp = path.with_name(f".tmp_{path.name}")
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), tmp)
    tmp.rename(path)
    return path


def latest_by(records: list[dict], key: str) -> dict:
    """The last record per key (a retried row's newest record wins)."""
    return {r[key]: r for r in records}


def load_batch(loader, batch: list) -> tuple[list, list]:
    """Decodes a batch of (row index, sample): ([(row, loaded sample)], [(row, sample, reason)]) where the reason is
    why the media failed ("missing" or "corrupt"; the row is recorded so, and retried by a rerun)."""
    row_of = {id(s): i for i, s in batch}
    loaded, failed = [], []
    for sample, item in loader.results([s for _, s in batch]):
        if isinstance(item, str):
            failed.append((row_of[id(sample)], sample, item))
        else:
            loaded.append((row_of[id(sample)], item))
    return loaded, failed

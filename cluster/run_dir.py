"""A run's folder: what a stage writes and what a resume reads.

    out_dir/config.yaml            the resolved config (secrets never written: keys are read from variables)
    out_dir/control.json           run id and the control-plane URL (``videop2r scale`` reads it)
    out_dir/metrics.jsonl          one line per step
    out_dir/rollouts/step_*.parquet  every rollout of a step
    out_dir/checkpoints/step_*/    learner state (DeepSpeed, all ranks) + driver.json; ``latest`` names the newest
    out_dir/hf/                    the final Hugging Face model (SFT's is what ``train`` starts from)
    out_dir/summary.json
    out_dir/trackers.json          each experiment tracker's run id and last step sent (cluster/trackers.py)
    out_dir/tensorboard/, wandb/, mlflow.db, mlflow-artifacts/   the trackers' local files (trainer.loggers)

A checkpoint is written under a temporary name and renamed when complete, so a run killed at any moment resumes
from the last complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path


CHECKPOINT = re.compile(r"^step_(\d+)$")
# what a run writes in its folder: none of these may be a symbolic link (a write through one planted by whoever
# can write the folder would land wherever it points: a config, a model, metrics written into someone's files)
OWN_ENTRIES = (
    "config.yaml",
    "control.json",
    "metrics.jsonl",
    "summary.json",
    "trackers.json",
    "mlflow.db",
    "checkpoints",
    "rollouts",
    "hf",
    "adapter",
    "tensorboard",
    "wandb",
    "mlflow-artifacts",
)


class RunExistsError(RuntimeError):
    """The output folder already holds a run and the command was not told to resume or --force."""


class RunDir:
    def __init__(self, out_dir: str | Path):
        self.path = Path(os.path.abspath(out_dir))  # symlinks kept: other hosts open this path as given
        self.checkpoints = self.path / "checkpoints"
        self.rollouts = self.path / "rollouts"

    # -- start ----------------------------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        return (self.path / "metrics.jsonl").exists() or self.latest_checkpoint() is not None

    def prepare(self, cfg, resume: bool, force: bool) -> str:
        """Creates the folder (or checks that it may be written) and returns the run id."""
        linked = [n for n in OWN_ENTRIES if (self.path / n).is_symlink()]
        if linked:  # before anything is written or removed
            raise RunExistsError(
                f"{self.path / linked[0]} is a symbolic link (to {os.readlink(self.path / linked[0])}): "
                "a run writes its own files there, never through a link; remove it or use another "
                "run.out_dir"
            )
        if self.holds_run() and not resume:
            if not force:
                raise RunExistsError(
                    f"{self.path} already holds a run: pass run.resume=auto to continue it, "
                    "--force to start over there, or another run.out_dir"
                )
            for sub in ("checkpoints", "rollouts", "hf", "adapter", "tensorboard", "wandb", "mlflow-artifacts"):
                shutil.rmtree(self.path / sub, ignore_errors=True)
            for f in ("metrics.jsonl", "summary.json", "control.json", "trackers.json", "mlflow.db"):
                (self.path / f).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.rollouts.mkdir(exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        from cluster.config_loader import dump_config

        (self.path / "config.yaml").write_text(dump_config(cfg))
        control = self.path / "control.json"
        if control.exists():
            return json.loads(control.read_text())["run_id"]
        return f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def check_private(self, checkpoint: Path) -> None:
        """Before a resume reads ``checkpoint``: every folder on the way and every file in it is this user's and
        writable by nobody else. A resume unpickles DeepSpeed's checkpoint files (``torch.load`` with
        ``weights_only=False``, DeepSpeed's own), so whoever could write them could run code in the learner."""
        uid = os.geteuid()
        paths = [self.path, self.checkpoints, checkpoint, *sorted(checkpoint.rglob("*"))]
        for p in paths:
            st = p.lstat()
            if st.st_uid != uid or st.st_mode & 0o022:
                who = (
                    f"owned by uid {st.st_uid}"
                    if st.st_uid != uid
                    else f"writable by other users ({oct(st.st_mode & 0o777)})"
                )
                raise RunExistsError(
                    f"{p} is {who}: resuming loads pickled checkpoint files from {checkpoint}, and "
                    f"whoever can change them could run code in the learner; make them yours and "
                    f"private (chmod -R go-w {self.path}) or start over in another run.out_dir"
                )

    def write_control(self, run_id: str, redis_url: str | None, password_env: str = "") -> None:
        """Owner-only (0600): a local redis-server's URL carries its password. A managed Redis's password stays in
        the environment, named here for ``videop2r scale``."""
        body = {"run_id": run_id, "redis_url": redis_url, "password_env": password_env}
        _atomic_write(self.path / "control.json", json.dumps(body, indent=1), mode=0o600)

    def control(self) -> dict:
        f = self.path / "control.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: is {self.path} the run.out_dir of a running `train`?")
        return json.loads(f.read_text())

    # -- per step -------------------------------------------------------------------------------------------------
    def log_metrics(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def metrics(self) -> list[dict]:
        f = self.path / "metrics.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    def truncate_metrics(self, after_step: int) -> None:
        """Drops lines of steps after ``after_step`` (a resumed run redoes them)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= after_step]
        _atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        for f in self.rollouts.glob("step_*.parquet"):
            if int(f.stem.split("_")[1]) > after_step:
                f.unlink()

    def log_rollouts(self, step: int, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.rollouts / f".step_{step:06d}.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.rename(self.rollouts / f"step_{step:06d}.parquet")

    def read_rollouts(self):
        import pyarrow.parquet as pq

        files = sorted(self.rollouts.glob("step_*.parquet"))
        return pq.read_table(files).to_pylist() if files else []

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> tuple[Path, Path]:
        """(temporary folder to write into, final name)."""
        final = self.checkpoints / f"step_{step:06d}"
        tmp = self.checkpoints / f".step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp, final

    def commit_checkpoint(self, tmp: Path, final: Path, driver_state: dict, keep: int) -> None:
        (tmp / "driver.json").write_text(json.dumps(driver_state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _atomic_write(self.checkpoints / "latest", final.name)
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def list_checkpoints(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if CHECKPOINT.match(p.name) and (p / "driver.json").is_file()]
        return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=1, default=float))


def _atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    if mode is not None:  # created with the mode: never readable by others, not even for a moment
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    tmp.write_text(text)
    tmp.rename(path)

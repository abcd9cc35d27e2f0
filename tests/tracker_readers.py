"""Reading what the experiment trackers stored, each with its own library's reader (tests only)."""

from __future__ import annotations

import json
from pathlib import Path


def _tb(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every point
    acc.Reload()
    return acc


def tensorboard_scalars(log_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar, as TensorBoard shows it (events an earlier writer put after a resume's
    ``purge_step`` are dropped by the reader)."""
    return [(e.step, e.value) for e in _tb(log_dir).Scalars(key)]


def tensorboard_texts(log_dir: Path, tag: str) -> list[str]:
    acc = _tb(log_dir)
    name = f"{tag}/text_summary"
    return [b.decode() for e in acc.Tensors(name) for b in e.tensor_proto.string_val]


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (``run-ID.wandb``). wandb 0.31 moved its reader of these files into
    wandb-core (Go), so the framing is read here: LevelDB's log format after a 7-byte ``:W&B`` header (32 KiB
    blocks; each chunk a 7-byte header: CRC32, little-endian length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4). The
    records themselves are parsed with wandb's own protobuf classes."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, out, partial = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
    return out


def wandb_steps(wandb_dir: Path, key: str) -> list[int]:
    """The steps of ``key`` as the W&B run will hold them: each start of a resumed run writes an offline run of its
    own, which ``wandb sync`` sends in order to the one W&B run, and W&B ignores a step lower than or equal to
    the run's current one (its documented rule for resumed runs), so a step sent again keeps its first value."""
    from wandb.proto import wandb_internal_pb2

    steps = []
    for f in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):  # by start time (the folder name)
        for data in _wandb_records(f):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            if rec.WhichOneof("record_type") != "history":
                continue
            keys = {item.key or "/".join(item.nested_key): item.value_json for item in rec.history.item}
            step = int(json.loads(keys["_step"])) if "_step" in keys else rec.history.step.num
            if key in keys and step > max(steps, default=0):
                steps.append(step)
    return steps


def mlflow_steps(uri: str, run_name: str, key: str) -> tuple[int, list[int], dict]:
    """(number of runs named ``run_name``, steps of ``key`` in it, its parameters), read with MlflowClient."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.videop2r.run_id = '{run_name}'"
    )
    if not runs:
        return 0, [], {}
    history = client.get_metric_history(runs[0].info.run_id, key)
    return len(runs), [m.step for m in history], dict(runs[0].data.params)

"""Experiment trackers from the driver (``trainer.loggers``): TensorBoard, Weights & Biases and MLflow, each through
its own client. Every step's ``metrics.jsonl`` row goes to each of them once, under the keys of
``cluster/tracker_rows.py``, with a few rollouts every ``trainer.log_samples_every`` steps.

One background thread talks to the trackers, so a slow or unreachable one never holds up a step: a tracker that
fails (at start or later) is one warning and is dropped; the run goes on, and ``metrics.jsonl`` keeps everything.

Resume: ``trackers.json`` in the run folder keeps each tracker's run id and the last step it was sent. A resumed
run continues the same tracker run: rows of ``metrics.jsonl`` a tracker missed (a run killed before its thread sent
them) are sent first, and steps it already has are not sent again. What "has" means differs:
- TensorBoard drops what the killed run wrote after the checkpoint (``purge_step``) and gets those steps again.
- W&B gets every step from the one its resumed run reports as next (online: what its server holds; offline:
  all of ``metrics.jsonl``): its process buffers what it writes (here flushed every second), so a SIGKILL loses
  the last steps sent, and W&B ignores a step lower than or equal to a run's current one, so a step that did
  arrive keeps its first value and is not duplicated.
- MLflow writes each call through (its server or SQLite) and cannot drop points: it keeps the killed run's values
  for the steps between the checkpoint and the kill (the same numbers: a resume repeats the run exactly, timings
  aside)."""

from __future__ import annotations

import json
import logging
import netrc
import os
import queue
import threading
import time
import uuid
from pathlib import Path

from cluster.config_loader import redact
from cluster.tracker_rows import flat_params, samples_markdown, scalars, SAMPLE_COLUMNS

log = logging.getLogger("videop2r")
RECORD = "trackers.json"


def wandb_key_problem() -> str | None:
    """Why W&B cannot log online here (no key: it would stop to ask for one), or None."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return None
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "no WANDB_API_KEY (and no `wandb login`): set it, or WANDB_MODE=offline to sync later with `wandb sync`"


class TensorBoard:
    name = "tensorboard"

    def start(self, run_dir: Path, run_id: str, stage: str, config: dict, state: dict, resumed_step: int) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard's reader drops what an earlier writer put at this step or later
        self.w = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1 if state else None)
        if not state:
            self.w.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)
            self.w.add_text("run_id", run_id, 0)
        return {"log_dir": str(run_dir / "tensorboard")}

    def resent_after(self, state: dict, resumed_step: int) -> int:
        return min(state.get("last_step", 0), resumed_step)

    def send(self, step: int, values: dict, rows: list[dict] | None) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        if rows:
            self.w.add_text("samples", samples_markdown(rows), step)
        self.w.flush()

    def finish(self) -> None:
        self.w.close()


class WandB:
    name = "wandb"

    def start(self, run_dir: Path, run_id: str, stage: str, config: dict, state: dict, resumed_step: int) -> dict:
        # A W&B service inherited from whatever started this driver (wandb sets WANDB_SERVICE in its process, and
        # children inherit it) would outlive a killed driver holding this run's id: the resumed run's init is then
        # refused ("run ID ... is in use"). This driver's W&B gets a service of its own.
        os.environ.pop("WANDB_SERVICE", None)
        import wandb

        self.wandb = wandb
        wid = state.get("id") or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "videop2r",
            name=run_id,
            id=wid,
            resume="allow",
            dir=str(run_dir),
            config=config,
            job_type=stage,
            group=os.environ.get("WANDB_RUN_GROUP"),
            settings=wandb.Settings(console="off", silent=True, init_timeout=60, x_transaction_log_flush_interval=1.0),
        )
        return {"id": wid, "project": self.run.project}

    def resent_after(self, state: dict, resumed_step: int) -> int:
        return max(0, self.run.starting_step - 1)  # 0 offline: `wandb sync` drops what the server already has

    def send(self, step: int, values: dict, rows: list[dict] | None) -> None:
        data = dict(values)
        if rows:
            data["samples"] = self.wandb.Table(
                columns=list(SAMPLE_COLUMNS), data=[[r.get(c) for c in SAMPLE_COLUMNS] for r in rows]
            )
        self.run.log(data, step=step, commit=True)  # written now, not when the next step arrives

    def finish(self) -> None:
        self.run.finish()


class MLflow:
    name = "mlflow"

    def start(self, run_dir: Path, run_id: str, stage: str, config: dict, state: dict, resumed_step: int) -> dict:
        # An unreachable server would otherwise be retried for minutes per call (MLflow's defaults)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a quiet console
        from mlflow.tracking import MlflowClient

        own = f"sqlite:///{run_dir / 'mlflow.db'}"  # the default: a file in the run folder
        uri = state.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or own
        self.client = MlflowClient(uri)
        if state.get("run_id"):
            self.id = state["run_id"]
            self.client.update_run(self.id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "videop2r"
            exp = self.client.get_experiment_by_name(name)
            # artifacts beside that file (MLflow's default for a database is ./mlruns in whatever folder the
            # driver runs in); a server keeps its own
            where = (run_dir / "mlflow-artifacts").as_uri() if uri == own else None
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=where)
            self.id = self.client.create_run(
                exp_id, run_name=run_id, tags={"videop2r.run_id": run_id, "videop2r.stage": stage}
            ).info.run_id
            from mlflow.entities import Param

            params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(self.id, params=params[i : i + 100])
        return {"run_id": self.id, "uri": uri}

    def resent_after(self, state: dict, resumed_step: int) -> int:
        return state.get("last_step", 0)

    def send(self, step: int, values: dict, rows: list[dict] | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.id, metrics=metrics[i : i + 1000])
        if rows:
            self.client.log_text(self.id, json.dumps(rows, indent=1, default=str), f"samples/step_{step:06d}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.id)


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


class Trackers:
    """The trackers of one stage's run. ``log(row, samples)`` after each ``metrics.jsonl`` row; ``shutdown()`` at the
    end (waits up to ``close_timeout_s`` for the thread, then leaves with a warning)."""

    def __init__(
        self, names: list[str], cfg, run, run_id: str, stage: str, resumed_step: int = 0, close_timeout_s: float = 60.0
    ):
        self.run, self.run_id, self.stage, self.resumed_step = run, run_id, stage, resumed_step
        self.close_timeout_s = close_timeout_s
        self.failed: list[str] = []
        self.sinks = []
        for name in names:
            if name in ("jsonl", "console"):
                continue
            problem = wandb_key_problem() if name == "wandb" else None
            if problem:
                self._fail(name, problem)
            else:
                self.sinks.append(KINDS[name]())
        self.config = redact(cfg.model_dump(mode="json"))
        path = run.path / RECORD
        self.record = json.loads(path.read_text()) if path.is_file() else {}
        self.backlog = run.metrics()  # the rows before this start's steps: what a tracker may have missed
        self.queue: queue.Queue = queue.Queue()
        self.thread = None
        if self.sinks:
            self.thread = threading.Thread(target=self._serve, name="trackers", daemon=True)
            self.thread.start()

    def log(self, row: dict, samples: list[dict] | None = None) -> None:
        if self.thread is not None:
            self.queue.put((row["step"], scalars(row), samples))

    def shutdown(self) -> None:
        if self.thread is None:
            return
        self.queue.put(None)
        self.thread.join(self.close_timeout_s)
        if self.thread.is_alive():
            log.warning(
                "experiment trackers still busy after %.0f s (%d steps not sent; metrics.jsonl has them): leaving them",
                self.close_timeout_s,
                self.queue.qsize(),
            )
        self.thread = None

    # -- the thread ---------------------------------------------------------------------------------------------
    def _fail(self, name: str, why) -> None:
        self.failed.append(name)
        text = (
            why
            if isinstance(why, str)
            else f"{type(why).__name__}: {str(why).splitlines()[0][:200] if str(why) else ''}"
        )
        log.warning("experiment tracker %s: %s; the run goes on without it", name, text)

    def _save(self) -> None:
        path = self.run.path / RECORD
        tmp = path.with_name(f".{RECORD}.tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.rename(path)

    def _call(self, sink, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:  # noqa: BLE001 - a tracker never ends the run: one warning, then without it
            self.sinks.remove(sink)
            self._fail(sink.name, e)
            return False

    def _serve(self) -> None:
        for sink in list(self.sinks):
            state = self.record.get(sink.name, {})

            def start(sink=sink, state=state):
                got = sink.start(self.run.path, self.run_id, self.stage, self.config, state, self.resumed_step)
                self.record[sink.name] = {**state, **got, "last_step": sink.resent_after(state, self.resumed_step)}

            if self._call(sink, start):  # then the rows this tracker missed, from metrics.jsonl
                after = self.record[sink.name]["last_step"]
                for row in self.backlog:
                    if row["step"] > after and not self._send(sink, row["step"], scalars(row), None):
                        break
        self._save()
        while True:
            item = self.queue.get()
            if item is None:
                break
            step, values, rows = item
            for sink in list(self.sinks):
                if step > self.record[sink.name]["last_step"]:
                    self._send(sink, step, values, rows)
            self._save()
        for sink in list(self.sinks):
            self._call(sink, sink.finish)

    def _send(self, sink, step: int, values: dict, rows) -> bool:
        if self._call(sink, sink.send, step, values, rows):
            self.record[sink.name]["last_step"] = step
            return True
        return False

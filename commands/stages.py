"""The two training stages as commands: ``videop2r sft`` (SFT on the CoT rows, writes ``out_dir/hf``) and
``videop2r train`` (RL from ``model.path``, the SFT model, which is also the KL reference). Each is a Ray job:
under ``ray job submit`` it joins the job's cluster, otherwise it starts a private local one. Both resume from
their latest checkpoint with ``run.resume=auto`` (the default)."""

from __future__ import annotations

import json
import logging
import time

import ray

from actors.redaction import redact_url
from cluster.across_hosts import check_storage
from cluster.run_dir import RunDir
from cluster.preflight import check_before_start
from cluster.stack import Dataset, Stack, check_judge_fits
from cluster.trackers import Trackers
from videoqa.sampler import IndexOrder
from videoqa.schema import RowError

log = logging.getLogger("videop2r")


def _open_run(cfg, force: bool) -> tuple[RunDir, str, dict | None]:
    """The run folder (absolute), its run id, and the driver state of the checkpoint to resume from."""
    run = RunDir(cfg.run.out_dir)
    cfg.run.out_dir = str(run.path)
    resume = cfg.run.resume == "auto" and not force  # --force starts over
    latest = run.latest_checkpoint() if resume else None
    if latest:
        run.check_private(latest)
    run_id = run.prepare(cfg, resume=resume, force=force)
    state = json.loads((latest / "driver.json").read_text()) if latest else None
    run.truncate_metrics(state["step"] if state else 0)  # steps after the checkpoint are done again
    if not state:
        (run.path / "eval_start.json").unlink(missing_ok=True)
    return run, run_id, (dict(state, path=str(latest)) if state else None)


def _bar(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


# -- stage 1 --------------------------------------------------------------------------------------------------------
def check_cot_rows(data: Dataset) -> None:
    bad = [s.problem_id for s in data.samples if not (s.observation and s.process)]
    if bad:
        raise RowError(
            f"{data.path}: {len(bad)} rows lack the 'observation' or 'process' text SFT trains on "
            f"(first: {', '.join(bad[:3])}); use a CoT file (data.cot_file)"
        )


def run_sft(
    cfg, force: bool = False, verbose: bool = False, stack: Stack | None = None, should_stop=None, check_every: int = 0
) -> dict:
    """``should_stop(learner_group, step) -> str | None``, asked every ``check_every`` steps: a reason to end SFT
    there (the demo stops once validation accuracy shows the skill RL should sharpen, leaving it headroom)."""
    from cluster.learner_group import LearnerGroup

    check_before_start(cfg, "sft")
    data = Dataset(cfg, cfg.data.cot_file)
    check_cot_rows(data)
    run, run_id, state = _open_run(cfg, force)
    trackers = Trackers(cfg.trainer.loggers, cfg, run, run_id, "sft", (state or {}).get("step", 0))
    own = stack is None
    try:
        stack = stack or Stack(cfg, verbose)
        check_storage(str(run.path), cfg.model.path)  # every host sees the run folder and the model, or none starts
        learner = LearnerGroup(
            cfg,
            cfg.model.path,
            with_reference=False,
            lr=cfg.sft.lr,
            warmup_steps=cfg.sft.warmup_steps,
            transport=cfg.transport if should_stop else None,
        )
        order = IndexOrder(len(data), cfg.run.seed)
        if state:
            learner.load(state["path"])
            order = IndexOrder(len(data), cfg.run.seed, **state["order"])
        t_start, bar = time.perf_counter(), _bar(cfg.sft.steps, learner.step, "sft")
        B, every, stop = cfg.sft.batch_size, cfg.sft.checkpoint_every, None
        while learner.step < cfg.sft.steps and stop is None:
            t0 = time.perf_counter()
            picked = []
            while len(picked) < B:
                picked += data.load(order.take(B - len(picked)))
            items = [it for _, it in picked]
            stats = learner.sft_step(ray.put(items), len(items))
            row = {
                "step": learner.step,
                "time": time.time(),
                "loss": stats["loss"],
                "skipped_steps": stats["skipped_steps"],
                "time/step": time.perf_counter() - t0,
                "prompt_ids": [it.sample.problem_id for it in items],
                "skipped_media": dict(data.skipped),
            }
            run.log_metrics(row)
            trackers.log(row)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if should_stop and check_every and learner.step % check_every == 0:
                stop = should_stop(learner, learner.step)
                if stop:
                    bar.write(f"[sft] stopping at step {learner.step}: {stop}")
            if (every and learner.step % every == 0) or learner.step == cfg.sft.steps or stop:
                tmp, final = run.checkpoint_dir(learner.step)
                learner.save(str(tmp), with_hf=False)
                run.commit_checkpoint(tmp, final, {"step": learner.step, "order": order.state()}, 1)
        bar.close()
        learner.save_hf(str(run.path / "hf"))
        learner.shutdown()
        summary = {
            "stage": "sft",
            "steps": learner.step,
            "final_loss": run.metrics()[-1]["loss"],
            "stopped_by": stop,
            "seconds": time.perf_counter() - t_start,
            "hf": str(run.path / "hf"),
            "skipped_media": dict(data.skipped),
            "trackers_failed": trackers.failed,
        }
        run.write_summary(summary)
        print(f"[sft] {learner.step} steps, loss {summary['final_loss']:.3f}; model written to {run.path / 'hf'}")
        return summary
    finally:
        trackers.shutdown()
        if own and stack is not None:
            stack.close()


# -- stage 2 --------------------------------------------------------------------------------------------------------
def run_train(
    cfg,
    force: bool = False,
    verbose: bool = False,
    stack: Stack | None = None,
    hooks=(),
    evaluate_on: list | None = None,
) -> dict:
    """RL from ``model.path``. ``evaluate_on``: held-out items evaluated before the first step (fresh runs) and
    after the last (the demo's measurements)."""
    from actors.reward_pool import RewardPool
    from actors.rollout_group import RolloutGroup
    from cluster.control import ControlPlane
    from cluster.evaluate import evaluate
    from cluster.learner_group import LearnerGroup
    from cluster.metrics import StepMetrics
    from cluster.trainer import RLTrainer

    if cfg.rollout.tensor_parallel_size > 1 and cfg.transport.scheme != "group":
        from cluster.config_loader import ConfigError

        # a channel has one receiver per worker; in the group every tensor-parallel rank is a member of its own
        raise ConfigError(
            f"rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size} needs "
            "transport.scheme=group (every tensor-parallel rank receives the weights there; a "
            "per-worker channel has one receiver)"
        )
    check_before_start(cfg, "train")  # the config's values first, then what it names on disk
    data = Dataset(cfg, cfg.data.train_file)
    check_judge_fits(cfg, data.samples)
    run, run_id, state = _open_run(cfg, force)
    trackers = Trackers(cfg.trainer.loggers, cfg, run, run_id, "train", (state or {}).get("step", 0))
    own = stack is None
    parts = [trackers]  # shut down last: the steps' rows are all queued by then
    try:
        stack = stack or Stack(cfg, verbose)
        check_storage(str(run.path), cfg.model.path)  # every host sees the run folder and the model, or none starts
        # first: a port in use is a start-up error, not one after the engines have loaded
        metrics = StepMetrics(
            cfg.metrics.port,
            host=cfg.metrics.host,
            stall_after_s=cfg.metrics.stall_after_s,
            run_info={"run_id": run_id, "algorithm": cfg.learner.algorithm, "model": cfg.model.path},
        )
        parts.append(metrics)
        learner = LearnerGroup(cfg, cfg.model.path, with_reference=True, transport=cfg.transport)
        parts.append(learner)
        order = IndexOrder(len(data), cfg.run.seed)
        if state:
            learner.load(state["path"])
            order = IndexOrder(len(data), cfg.run.seed, **state["order"])
            log.warning("resuming %s from step %d (%s)", run.path, learner.step, state["path"])
        if learner.step > 0:
            learner.publish(learner.step)  # the workers start from model.path and receive this version first
        url = stack.redis_url()
        control = ControlPlane(url, run_id, password=stack.redis_password())
        run.write_control(run_id, url, cfg.cache.password_env)
        try:
            control.set_desired_workers(cfg.rollout.num_workers)  # this start's count wins over an old request
        except Exception as e:  # noqa: BLE001 - no control plane: the run goes on at its configured size
            log.warning(
                "control plane at %s unavailable (%s): `videop2r scale` will not reach this run",
                redact_url(url),
                type(e).__name__,
            )
        rollout = RolloutGroup(
            cfg.rollout,
            cfg.transport,
            cfg.model.path,
            cfg.model.dtype,
            source=learner,
            lora_rank=cfg.learner.lora.served_rank,
        )
        parts.append(rollout)
        pool = RewardPool(cfg, tokenizer_path=cfg.model.path)
        parts.append(pool)
        trainer = RLTrainer(cfg, stack, run, data, learner, rollout, pool, control, metrics)
        trainer.trackers = trackers
        trainer.order = order
        trainer.counters.update((state or {}).get("counters", {}))
        trainer.hooks.extend(hooks)
        summary = {
            "stage": "train",
            "run_id": run_id,
            "algorithm": cfg.learner.algorithm,
            "resumed_from": (state or {}).get("path"),
        }
        if evaluate_on:  # measured once, before the first step; a resumed run reads it back
            first = run.path / "eval_start.json"
            if not first.is_file():
                first.write_text(json.dumps(evaluate(rollout, pool, stack.tokenizer, evaluate_on, cfg.eval)))
            summary["eval_start"] = json.loads(first.read_text())
        t0 = time.perf_counter()
        bar = _bar(cfg.trainer.steps, trainer.step, cfg.learner.algorithm)

        def progress(tr, row):
            bar.update(1)
            bar.set_postfix(
                R_P=f"{row['reward_perception']:.2f}",
                R_R=f"{row['reward_reasoning']:.2f}",
                acc=f"{row['accuracy']:.2f}",
                s=f"{row['time/step']:.1f}",
            )

        trainer.train(progress)
        bar.close()
        summary.update(
            steps=trainer.step,
            seconds=time.perf_counter() - t0,
            counters=dict(trainer.counters),
            stopped_early=trainer.stop_requested,
            rollout_events=list(rollout.events),
            skipped_media=dict(data.skipped),
            trackers_failed=trackers.failed,
        )
        if trainer.stop_requested:
            print(
                f"[train] stopped at step {trainer.step} with a checkpoint; resume with the same command "
                f"(run.resume=auto) and run.out_dir={run.path}"
            )
        else:
            learner.save_hf(str(run.path / "hf"))
            summary["hf"] = str(run.path / "hf")
            if evaluate_on:
                summary["eval_end"] = evaluate(rollout, pool, stack.tokenizer, evaluate_on, cfg.eval)
        run.write_summary(summary)
        return summary
    finally:
        for p in reversed(parts):
            try:
                p.shutdown()
            except Exception:  # noqa: BLE001 - best effort on the way out; the cluster goes with the job anyway
                pass
        if own and stack is not None:
            stack.close()

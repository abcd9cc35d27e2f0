"""Stage 2, the RL loop (PA-GRPO or GRPO) as one Ray job: generate (rollout workers) -> score (reward pool) ->
update (learner ranks) -> sync (weights to the workers) -> log, metrics, checkpoint.

With ``trainer.max_staleness >= 1`` the next batch is generated while the learner updates (one batch ahead):
its rollouts come from weights one version behind the update that trains on them, and the loss corrects for that
with truncated importance sampling. A group more than ``max_staleness`` versions old is sampled again.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter

import ray
import torch

from actors.reward_scorer import ScoreItem
from actors.rollout_worker import RolloutRequest
from actors.vllm_inputs import vllm_prompt
from cluster.metrics import RunCount
from cluster.step_batch import StepBatch
from cluster.tracker_rows import samples
from learner.advantages import process_advantages

log = logging.getLogger("videop2r")


class RLTrainer:
    def __init__(self, cfg, stack, run, dataset, learner, rollout, pool, control=None, metrics=None):
        self.cfg, self.stack, self.run, self.data = cfg, stack, run, dataset
        self.learner, self.rollout, self.pool = learner, rollout, pool
        self.control, self.metrics = control, metrics
        self.trackers = None  # cluster.trackers.Trackers, set by the caller
        self.step = learner.step
        self.order = None  # videoqa.sampler.IndexOrder, set by the caller (fresh or from a checkpoint)
        self.counters: Counter = Counter({c: 0 for c in RunCount})  # run totals (checkpointed), each from step 1
        self.desired_workers = rollout.num_workers  # `videop2r scale`'s last request, else the configured count
        self.stop_requested = False
        self.pending: StepBatch | None = None  # the next batch, generated during the last update (overlapped)
        self.hooks: list = []  # called as hook(trainer, step) after each step (tests inject faults here)
        self.last_step_at = time.time()

    # -- the step ---------------------------------------------------------------------------------------------
    def run_step(self, step: int, pending: StepBatch | None) -> StepBatch | None:
        t0 = time.perf_counter()
        self.apply_scaling()
        batch = self.refresh_stale(pending or self.produce(step))
        update = self.update(batch)  # on the learner ranks, in the background
        overlap = self.cfg.trainer.max_staleness > 0 and step < self.cfg.trainer.steps and not self.stop_requested
        upcoming = self.produce(step + 1) if overlap else None  # under the weights the update is replacing
        stats = self.finish_update(update)
        sync = self.sync()
        self.record(batch, stats, sync, time.perf_counter() - t0, overlap)
        return upcoming

    def produce(self, step: int, n: int | None = None) -> StepBatch:
        """B prompts (or ``n``), G rollouts each, scored; flat groups replaced when dynamic sampling is on."""
        batch = self.generate(step, n or self.cfg.trainer.prompts_per_step)
        self.score(batch)
        rounds = 0
        while self.cfg.trainer.drop_flat_groups and rounds < self.cfg.trainer.max_resample_rounds:
            flat_p, flat_r = batch.flat_groups()
            flat = [i for i, (p, r) in enumerate(zip(flat_p, flat_r)) if p and r]
            if not flat:
                break
            fresh = self.generate(step, len(flat), salt=f"r{rounds}")
            self.score(fresh)
            batch.replace_groups(flat, fresh)
            batch.resampled_groups += len(flat)
            rounds += 1
        return batch

    def generate(self, step: int, n: int, salt: str = "") -> StepBatch:
        """The next ``n`` prompts of the data order (rows whose media fails to decode are skipped, counted, and
        replaced), each decoded once, sampled G times."""
        t0 = time.perf_counter()
        order_before = self.order.state()
        picked: list[tuple[int, object]] = []
        tried = 0
        while len(picked) < n:
            if tried > len(self.data) + n:
                raise RuntimeError(
                    f"fewer than {n} rows of {self.data.path} decode ({dict(self.data.skipped)}): "
                    f"{self.data.loader.errors[-1] if self.data.loader.errors else ''}"
                )
            want = n - len(picked)
            picked += self.data.load(self.order.take(want))
            tried += want
        decoded = time.perf_counter()
        batch = self.sample(step, [i for i, _ in picked], [it for _, it in picked], salt)
        batch.timings["decode"] = decoded - t0
        batch.order_before = order_before
        return batch

    def sample(self, step: int, rows: list[int], items: list, salt: str = "") -> StepBatch:
        t1 = time.perf_counter()
        requests = [
            RolloutRequest(f"{salt}{k}:{it.sample.problem_id}", vllm_prompt(self.stack.tokenizer, it))
            for k, it in enumerate(items)
        ]
        results = self.rollout.generate(requests, step=step, logprobs=True)
        return StepBatch(step, rows, items, results, timings={"generate": time.perf_counter() - t1})

    def score(self, batch: StepBatch) -> None:
        t0 = time.perf_counter()
        scored = self.pool.score(
            [ScoreItem.from_sample(batch.items[i].sample, resp.text) for i, resp in batch.responses()]
        )
        batch.rewards, batch.score_stats = scored.rewards, batch.score_stats + scored.stats
        batch.judge_seconds += scored.judge_seconds
        batch.timings["score"] = batch.timings.get("score", 0.0) + time.perf_counter() - t0

    def refresh_stale(self, batch: StepBatch) -> StepBatch:
        """Groups more than ``max_staleness`` versions behind the learner are sampled again (never trained on)."""
        k = self.cfg.trainer.max_staleness
        stale = [i for i, v in enumerate(batch.versions()) if self.learner.version - v > k]
        if stale:  # the same prompts, sampled again by the current weights
            fresh = self.sample(batch.step, [batch.rows[i] for i in stale], [batch.items[i] for i in stale], "stale")
            self.score(fresh)
            batch.replace_groups(stale, fresh)
            batch.regenerated_groups += len(stale)
        return batch

    def update(self, batch: StepBatch):
        t0 = time.perf_counter()
        missing = batch.missing_verdict_fraction()
        batch.zero_perception = missing > self.cfg.reward.max_missing_frac
        if batch.zero_perception:
            log.warning(
                "step %d: %.0f%% of the judge's verdicts are missing (reward.max_missing_frac=%.2f): "
                "perception advantages zeroed for this step",
                batch.step,
                100 * missing,
                self.cfg.reward.max_missing_frac,
            )
        batch.learner_version = self.learner.version
        items_ref = ray.put(batch.items)  # each prompt's frames once, shared by every rank
        refs = self.learner.rl_step_async(
            items_ref, batch.learner_rollouts(self.learner.version), batch.group_size, batch.zero_perception
        )
        return refs, t0

    def finish_update(self, update) -> dict:
        refs, t0 = update
        t1 = time.perf_counter()
        stats = self.learner.finish_rl_step(refs)
        stats["update_wait_s"] = time.perf_counter() - t1
        stats["update_s"] = time.perf_counter() - t0
        return stats

    def sync(self):
        t0 = time.perf_counter()
        self.learner.publish(self.learner.step)
        report = self.rollout.sync_weights()
        report.seconds = time.perf_counter() - t0  # the gather and snapshot on the learner included
        return report

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def record(self, batch: StepBatch, stats: dict, sync, wall: float, overlapped: bool) -> None:
        self.step = batch.step
        G = batch.group_size
        r_p = torch.tensor([r.perception for r in batch.rewards])
        r_r = torch.tensor([r.reasoning for r in batch.rewards])
        if batch.zero_perception:
            r_p = torch.zeros_like(r_p)
        valid = torch.tensor([r.perception_valid for r in batch.rewards])
        a_p, a_r, _ = process_advantages(r_p, r_r, G, self.cfg.learner.algorithm, valid)
        staleness = [batch.learner_version - v for v in batch.versions()]
        generated = sum(len(resp.token_ids) for _, resp in batch.responses())
        c = self.counters
        c[RunCount.REGENERATED_GROUPS] += batch.regenerated_groups
        c[RunCount.RESAMPLED_GROUPS] += batch.resampled_groups
        c[RunCount.ZEROED_PERCEPTION_STEPS] += int(batch.zero_perception)
        c[RunCount.NONFINITE_STEPS] += int(stats.get("skipped_steps", 0) > 0 or stats.get("nonfinite_losses", 0) > 0)
        c[RunCount.GENERATED_TOKENS] += generated
        c[RunCount.TRAINED_TOKENS] += stats.get("trained_tokens", 0)
        c[RunCount.SYNC_FAILED] += len(sync.failed)
        flat_p, flat_r = batch.flat_groups()
        t, n = batch.timings, max(1, len(batch.rewards))
        row = {
            "step": batch.step,
            "time": time.time(),
            "weight_version": self.learner.version,
            **batch.reward_summary(),
            **{k: v for k, v in stats.items() if isinstance(v, (int, float))},
            "flat_groups_frac_perception": sum(flat_p) / len(flat_p),
            "flat_groups_frac_reasoning": sum(flat_r) / len(flat_r),
            "staleness_mean": sum(staleness) / len(staleness),
            "staleness_max": max(staleness),
            "missing_verdict_frac": batch.missing_verdict_fraction(),
            "zeroed_perception": batch.zero_perception,
            "time/decode": t.get("decode", 0.0),
            "time/generate": t.get("generate", 0.0),
            "time/score": t.get("score", 0.0),
            "time/update": stats["update_s"],
            "time/update_wait": stats["update_wait_s"],
            "time/sync": sync.seconds,
            "time/logprobs": stats.get("logprobs_s", 0.0),
            "time/optimize": max(0.0, stats["update_s"] - stats.get("logprobs_s", 0.0)),
            "time/step": wall,
            "overlapped": overlapped,
            "generated_tokens": generated,
            "generated_tokens_per_s": generated / max(t.get("generate", 0.0), 1e-9),
            "trained_tokens_per_s": stats.get("trained_tokens", 0) / max(stats["update_s"], 1e-9),
            "segment_tokens/perception": stats.get("perception_tokens", 0.0) / n,
            "segment_tokens/reasoning": stats.get("reasoning_tokens", 0.0) / n,
            "rollout_workers": self.rollout.num_workers,
            "rollout_workers_ready": self.rollout.ready_workers,
            "rollout_workers_desired": self.desired_workers,
            "rollout_worker_restarts": self.rollout.restarts,
            "reward_workers": self.pool.num_workers,
            "sync_failed": len(sync.failed),
            "sync_updated": len(sync.updated),
            "sync_mib": plan.nbytes / 2**20 if (plan := getattr(self.learner, "plan", None)) else 0.0,  # per worker
            "prompt_ids": [it.sample.problem_id for it in batch.items],
            "skipped_media": dict(self.data.skipped),
            **{f"total/{k}": v for k, v in self.counters.items()},
            **{f"judge/{k[6:]}": v for k, v in batch.score_stats.items() if k.startswith("judge_")},
            **{f"cache/{k[6:]}": v for k, v in batch.score_stats.items() if k.startswith("cache_")},
            # reward workers that scored their first batch this step: all of them at step 1, then restarts
            "reward_worker_starts": batch.score_stats.get("worker_starts", 0),
            "reward_chunks_rescored": batch.score_stats.get("rescored_chunks", 0),
        }
        self.run.log_metrics(row)
        logged = batch.log_rows({"advantage_perception": a_p, "advantage_reasoning": a_r})
        if self.cfg.trainer.log_rollouts:
            self.run.log_rollouts(batch.step, logged)
        if self.trackers is not None:
            every, questions = (
                self.cfg.trainer.log_samples_every,
                {it.sample.problem_id: it.sample.problem for it in batch.items},
            )
            shown = (
                samples(logged, questions, self.cfg.trainer.log_samples) if every and batch.step % every == 0 else None
            )
            self.trackers.log(row, shown)
        if self.metrics is not None:
            self.metrics.record_step(row, batch)
        if self.control is not None:
            self.control.report(
                {
                    "step": batch.step,
                    "weight_version": self.learner.version,
                    "rollout_workers": self.rollout.num_workers,
                    "max_rollout_workers": self.cfg.rollout.max_workers,
                }
            )
        self.last_row, self.last_step_at = row, time.time()
        for hook in self.hooks:
            hook(self, batch.step)

    def apply_scaling(self) -> None:
        """The desired rollout worker count (``videop2r scale``), applied between steps: new workers join with the
        current weights once their engines are up; removed ones are idle now (drained)."""
        if self.control is None:
            return
        refused = self.control.rejected
        want = self.control.desired_workers(self.cfg.rollout.max_workers)
        self.counters[RunCount.REFUSED_SCALE_REQUESTS] += self.control.rejected - refused
        have = self.rollout.num_workers
        if want is None or want == have:
            return
        self.desired_workers = want
        if want > have:
            log.warning("scaling rollout workers %d -> %d (new ones join once started)", have, want)
            self.rollout.add_workers(want - have, wait=False)
        else:
            log.warning("scaling rollout workers %d -> %d", have, want)
            self.rollout.remove_workers(have - want)

    def driver_state(self) -> dict:
        # A batch generated ahead (overlapped mode) is not in the checkpoint: a resume generates it again, so the
        # data order is saved as it was before that batch took its rows.
        order = self.pending.order_before if self.pending is not None else self.order.state()
        return {
            "step": self.step,
            "weight_version": self.learner.version,
            "order": order,
            "counters": dict(self.counters),
        }

    def checkpoint(self) -> None:
        tmp, final = self.run.checkpoint_dir(self.step)
        self.learner.save(str(tmp), with_hf=False)
        self.run.commit_checkpoint(tmp, final, self.driver_state(), self.cfg.trainer.keep_checkpoints)

    # -- the loop --------------------------------------------------------------------------------------------------
    def train(self, progress=None) -> None:
        """Runs to ``trainer.steps`` (or until SIGTERM / Ctrl-C, after which it checkpoints and returns)."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def request_stop(signum, frame):
            if self.stop_requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("stopping after this step (a checkpoint follows)")

        for s in previous:
            signal.signal(s, request_stop)
        try:
            every, saved = self.cfg.trainer.checkpoint_every, self.step
            while self.step < self.cfg.trainer.steps and not self.stop_requested:
                self.pending = self.run_step(self.step + 1, self.pending)
                if progress is not None:
                    progress(self, self.last_row)
                if every and self.step % every == 0:
                    self.checkpoint()
                    saved = self.step
            if self.step != saved:
                self.checkpoint()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

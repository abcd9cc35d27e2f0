"""A group of rollout workers: shares each batch by load, survives worker deaths, keeps every worker's weights current
(the sync itself is in ``actors/weight_sync.py``).

- Load: a batch is cut into ``workers x chunks_per_worker`` chunks; each worker holds one chunk at a time and
  takes the next when it finishes, so a faster (or less loaded) worker serves more (with more than one chunk per
  worker; the default is one, since a worker's chunks run one after another, each a smaller vLLM batch).
- Faults: a chunk whose worker dies goes back to the queue and is served whole by a survivor (a group is never
  split, nothing is duplicated; per-request seeds make the retry sample the same group). Ray restarts the dead
  worker; it rejoins only after it has received the current weights.
- Membership: ``add_workers`` / ``remove_workers`` between steps; nothing else restarts. New workers receive the
  current weights before they serve.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from actors.rollout_worker import RolloutRequest, RolloutResult, RolloutWorker
from actors.weight_sync import LocalWeightSource, SyncReport, WeightSync

__all__ = ["LocalWeightSource", "RolloutGroup", "SyncReport"]

log = logging.getLogger(__name__)

NODE_CHECK_S = 2.0  # how often a batch looks whether a restarting worker's node has died (_replace_on_dead_nodes)


@dataclass
class Slot:
    name: str
    actor: object
    placement_group: object = None  # each worker has its own, so it can be added or removed alone
    incarnation: str = ""
    version: int = 0
    ready: bool = False
    state_ref: object = None  # pending state() call while the worker starts or restarts
    needs_sync: bool = False  # its last weight sync failed: brought up to date before it serves again
    started: float = 0.0  # time.monotonic() when it was asked for


class RolloutGroup(WeightSync):
    def __init__(
        self,
        rollout_cfg,
        transport_cfg,
        model_path: str,
        dtype: str = "float32",
        source: LocalWeightSource | None = None,
        num_workers: int | None = None,
        lora_rank: int = 0,
    ):
        """``lora_rank`` > 0: the source sends LoRA adapters of that rank (``learner.lora.served_rank``)."""
        self.cfg, self.transport, self.lora_rank = rollout_cfg, transport_cfg, lora_rank
        self.model_path, self.dtype, self.source = model_path, dtype, source
        self.slots: dict[str, Slot] = {}
        self._next_id = 0
        self._accepted: set[str] | None = None
        self.events: list[str] = []  # deaths, restarts, re-syncs: for logs and tests
        self.restarts = 0  # workers lost (died or hung) and restarted by Ray, over the group's life
        self._group_members: list[str] | None = None  # the workers of the current weight group (scheme=group)
        self._group_algorithm = "relay"
        self.add_workers(num_workers or rollout_cfg.num_workers, wait=True)

    # -- membership ----------------------------------------------------------------------------------------------
    def _new_actor(self, name: str):
        """A worker in a placement group of its own (one bundle: its CPUs and GPUs)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.placement_group([self._bundle()], name=f"videop2r-{name}-{id(self):x}")
        actor = (
            ray.remote(RolloutWorker)
            .options(
                num_cpus=self.cfg.num_cpus,
                num_gpus=self.cfg.num_gpus,
                resources=dict(self.cfg.resources),
                max_restarts=self.cfg.max_restarts,
                max_task_retries=0,
                max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
            )
            .remote(self.cfg, self.model_path, self.dtype, name, self.lora_rank)
        )
        return actor, pg

    def add_workers(self, n: int, wait: bool = True) -> list[str]:
        """Starts ``n`` workers. ``wait=False`` returns at once: each joins (with the current weights) when its
        engine is up, in ``generate`` or ``wait_until_ready``."""
        new = []
        for _ in range(n):
            name = f"rollout-{self._next_id}"
            self._next_id += 1
            actor, pg = self._new_actor(name)
            self.slots[name] = Slot(name, actor, pg, state_ref=actor.state.remote(), started=time.monotonic())
            new.append(name)
            self.events.append(f"{name} starting")
        if wait:
            try:
                self.wait_until_ready(self.cfg.start_timeout_s)
            except TimeoutError:
                self._drop(new, "did not start")
                raise
        return new

    def _bundle(self) -> dict:
        bundle = {"CPU": self.cfg.num_cpus, **self.cfg.resources}  # custom resources pin workers to their nodes
        if self.cfg.num_gpus:
            bundle["GPU"] = self.cfg.num_gpus
        return bundle

    def _unplaced(self, names: list[str]) -> list[str]:
        """The named workers whose placement group the cluster has not been able to reserve."""
        import ray

        pgs = {k: self.slots[k].placement_group for k in names if k in self.slots and self.slots[k].placement_group}
        if not pgs:
            return []
        refs = {k: pg.ready() for k, pg in pgs.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0.5)
        return [k for k, ref in refs.items() if ref not in ready]

    def _missing_resources(self, names: list[str]) -> str:
        from actors.cluster_view import lacking

        return (
            f"rollout worker(s) {', '.join(names)} could not be placed: {lacking(self._bundle(), len(names))}: "
            "lower rollout.num_workers or rollout.num_cpus/num_gpus, or add nodes"
        )

    def _drop(self, names: list[str], why: str) -> None:
        import ray

        for k in names:
            slot = self.slots.pop(k, None)
            if slot is None:
                continue
            ray.kill(slot.actor, no_restart=True)
            if slot.placement_group is not None:
                ray.util.remove_placement_group(slot.placement_group)
            if self.source:
                self.source.close(k)
            self.events.append(f"{k} removed ({why})")

    def remove_workers(self, n: int) -> list[str]:
        """Removes ``n`` workers: those not serving (starting or restarting) first, then the newest. Between batches
        they are drained; during one (another thread), a removed worker's chunk goes back to the others."""
        names = list(self.slots)
        by_preference = sorted(names, key=lambda k: (self.slots[k].ready, -names.index(k)))
        gone = by_preference[:n] if n > 0 else []
        if len(gone) >= len(names):
            raise ValueError(f"cannot remove {n} of {len(names)} rollout workers: at least one must stay")
        self._drop(gone, "scaled down")
        return gone

    def shutdown(self) -> None:
        import ray

        for slot in list(self.slots.values()):
            ray.kill(slot.actor, no_restart=True)
            if slot.placement_group is not None:
                ray.util.remove_placement_group(slot.placement_group)
        self.slots.clear()

    @property
    def ready_workers(self) -> int:
        return sum(s.ready for s in self.slots.values())

    @property
    def num_workers(self) -> int:
        return len(self.slots)

    def _lost(self, name: str, why: str) -> None:
        """A worker died: stop using it, and ask for its state, which answers once Ray has restarted it."""
        slot = self.slots.get(name)
        if slot is None:  # removed meanwhile (remove_workers from another thread): nothing to restart
            return
        slot.ready = False
        if self.source:
            self.source.close(name)
        slot.state_ref = slot.actor.state.remote()
        self.events.append(f"{name} lost ({why})")
        self.restarts += 1
        log.warning("rollout worker %s lost (%s); its prompts go to the others while Ray restarts it", name, why)
        self._replace_if_node_died(name)

    def _replace_on_dead_nodes(self) -> None:
        """Restarting workers whose node has died since they were lost (a killed raylet takes its workers at once;
        Ray declares the node dead only after its health checks): see ``_replace_if_node_died``."""
        for k, s in list(self.slots.items()):
            if s.state_ref is not None and s.incarnation:
                self._replace_if_node_died(k)

    def _replace_if_node_died(self, name: str) -> bool:
        """A worker whose node died is started again in a placement group of its own, which waits (with Ray's
        back-off) for a node with room, instead of Ray's restart in its old group: Ray 2.60 re-places a dead node's
        group ("RESCHEDULING") on every pass of its GCS loop with no back-off, so while no node has room (a cluster
        without a spare rollout node) the GCS spins a core and starves its health checks and RPCs (seen across
        hosts: the run's steps slowed from seconds to minutes; Ray PR 65007)."""
        import ray

        slot = self.slots.get(name)
        if slot is None or slot.placement_group is None:
            return False
        try:
            state = ray.util.placement_group_table(slot.placement_group).get("state")
        except Exception as e:  # noqa: BLE001 - the GCS not answering: leave the restart to Ray
            log.debug("placement group of %s unknown: %s", name, e)
            return False
        if state != "RESCHEDULING":
            return False
        ray.kill(slot.actor, no_restart=True)
        ray.util.remove_placement_group(slot.placement_group)
        slot.actor, slot.placement_group = self._new_actor(name)
        slot.state_ref, slot.started = slot.actor.state.remote(), time.monotonic()
        self.events.append(f"{name} placed again (its node died)")
        return True

    def _restart(self, name: str, why: str) -> None:
        """A worker alive but useless (not answering within ``rollout.chunk_timeout_s``, or its engine dead): Ray
        restarts it (a kill that allows restarts) and it rejoins with the current weights like a worker that died."""
        import ray

        slot = self.slots.get(name)
        if slot is None:
            return
        log.warning(
            "rollout worker %s %s: restarting it; its prompts go to the others",
            name,
            f"did not answer within rollout.chunk_timeout_s={self.cfg.chunk_timeout_s:.0f} s" if why == "hung" else why,
        )
        ray.kill(slot.actor, no_restart=False)
        self._lost(name, why)

    def _rejoin(self, name: str) -> None:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        slot = self.slots.get(name)
        if slot is None:
            return
        try:
            st = ray.get(slot.state_ref)
        except ActorUnavailableError:  # still restarting: ask again (the answer comes once it is up)
            if not self._replace_if_node_died(name):  # its node died since it was lost
                time.sleep(0.5)
                slot.state_ref = slot.actor.state.remote()
            return
        except ActorDiedError:  # out of restarts: it is gone for good
            gone = self.slots.pop(name)
            if gone.placement_group is not None:
                ray.util.remove_placement_group(gone.placement_group)
            self.events.append(f"{name} removed (no restarts left)")
            return
        rejoined = bool(slot.incarnation)  # it served before (a restart), or it is new
        slot.state_ref, slot.incarnation, slot.version = None, st["incarnation"], st["version"]
        if self._accepted is None:
            self._accepted = set(ray.get(slot.actor.accepted_names.remote()))
        self._bring_up_to_date([name])
        self.events.append(f"{name} {'rejoined' if rejoined else 'joined'} at weight version {slot.version}")

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Blocks until every starting or restarting worker is up (and has the current weights), at most
        ``timeout_s`` (default ``rollout.start_timeout_s``); a worker the cluster has no room for is named with the
        resources it lacks."""
        import ray

        from actors.cluster_view import start_clock

        timeout_s = self.cfg.start_timeout_s if timeout_s is None else timeout_s
        clock = start_clock(timeout_s, "rollout workers")  # stopped while the autoscaler brings nodes up
        while True:
            waiting = [k for k, s in list(self.slots.items()) if s.state_ref is not None]
            if not waiting:
                return
            if clock.expired():
                unplaced = self._unplaced(waiting)
                if unplaced:
                    raise TimeoutError(self._missing_resources(unplaced))
                raise TimeoutError(
                    f"rollout worker(s) {', '.join(waiting)} did not come up within {timeout_s:.0f} s "
                    "(their engines are still loading or keep failing: see the Ray logs)"
                )
            ready, _ = ray.wait(
                [self.slots[k].state_ref for k in waiting if k in self.slots], num_returns=1, timeout=clock.step()
            )
            for k in waiting:
                slot = self.slots.get(k)
                if slot is not None and slot.state_ref is not None and slot.state_ref in ready:
                    self._rejoin(k)

    def _drop_unplaceable(self) -> None:
        """Workers added without waiting (scaling up) that the cluster could not place within
        ``rollout.start_timeout_s`` are given up, with a warning naming what each node lacks; while the autoscaler
        brings nodes up (at most ``room.MAX_PENDING_S`` more) they are waited for."""
        from actors.cluster_view import autoscaler_pending
        from actors.room import MAX_PENDING_S

        now = time.monotonic()
        late = [
            k
            for k, s in list(self.slots.items())
            if s.state_ref is not None and not s.incarnation and now - s.started > self.cfg.start_timeout_s
        ]
        unplaced = self._unplaced(late) if late else []
        if unplaced and autoscaler_pending():
            unplaced = [k for k in unplaced if now - self.slots[k].started > self.cfg.start_timeout_s + MAX_PENDING_S]
        if unplaced:
            log.warning("giving up on %s", self._missing_resources(unplaced))
            self._drop(unplaced, "no resources")

    # -- generation ----------------------------------------------------------------------------------------------
    def generate(
        self, requests: list[RolloutRequest], step: int = 0, logprobs: bool = False, overrides: dict | None = None
    ) -> list[RolloutResult]:
        """G responses for every request, in request order, whatever happens to individual workers."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not requests:
            return []
        behind = [k for k, s in list(self.slots.items()) if s.needs_sync and s.state_ref is None]
        if behind:  # a failed sync is retried before that worker serves again
            self.sync_weights(behind)
        self._drop_unplaceable()
        self._replace_on_dead_nodes()
        if not any(s.ready for s in list(self.slots.values())):
            self.wait_until_ready()
        ready = [k for k, s in list(self.slots.items()) if s.ready]
        n_chunks = 1 if len(ready) <= 1 else len(ready) * self.cfg.chunks_per_worker
        size = math.ceil(len(requests) / max(1, n_chunks))
        chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
        queue, results = deque(range(len(chunks))), [None] * len(chunks)
        inflight: dict = {}  # ref -> (worker, chunk index, when it must have answered)
        deadline = time.monotonic() + self.cfg.batch_timeout_s
        checked = time.monotonic()  # when restarting workers' nodes were last looked at
        while queue or inflight:
            now = time.monotonic()
            if now - checked > NODE_CHECK_S:
                self._replace_on_dead_nodes()
                checked = now
            for ref in [r for r, (_, _, due) in inflight.items() if due <= now]:
                worker, ci, _ = inflight.pop(ref)  # its answer, should it ever come, is never used
                queue.appendleft(ci)
                self._restart(worker, "hung")
            busy = {w for w, _, _ in inflight.values()}
            for k, s in list(self.slots.items()):  # a snapshot: remove_workers may run meanwhile
                if queue and s.ready and k not in busy:
                    ci = queue.popleft()
                    ref = s.actor.generate.remote(chunks[ci], step, logprobs, overrides)
                    inflight[ref] = (k, ci, time.monotonic() + self.cfg.chunk_timeout_s)
            restarting = {s.state_ref: k for k, s in list(self.slots.items()) if s.state_ref is not None}
            if not inflight and not restarting:
                raise RuntimeError("every rollout worker is gone; the batch cannot complete")
            if deadline - now <= 0:
                raise TimeoutError(f"rollout batch not done within rollout.batch_timeout_s={self.cfg.batch_timeout_s}")
            next_due = min((due for _, _, due in inflight.values()), default=deadline)
            if restarting:  # back in time to look at their nodes
                next_due = min(next_due, now + NODE_CHECK_S)
            done, _ = ray.wait(
                list(inflight) + list(restarting), num_returns=1, timeout=max(0.0, min(deadline, next_due) - now)
            )
            for ref in done:
                if ref in restarting:
                    self._rejoin(restarting[ref])
                    continue
                if ref not in inflight:
                    continue
                worker, ci, _ = inflight.pop(ref)
                try:
                    results[ci] = ray.get(ref)
                except RayActorError as e:  # died, or restarting (ActorUnavailableError)
                    queue.appendleft(ci)  # the whole chunk again, on whoever is free
                    self._lost(worker, type(e).__name__)
                except RayTaskError as e:
                    if not engine_died(e):  # anything else would fail on every worker: the run's error
                        raise
                    queue.appendleft(ci)
                    self._restart(worker, "lost its vLLM engine (EngineDeadError)")
        return [r for chunk in results for r in chunk]


def engine_died(error: Exception) -> bool:
    """A worker's task failed because its vLLM engine process died (vLLM's ``EngineDeadError``): the worker is
    useless until restarted, unlike a task error that any worker would hit."""
    cause = getattr(error, "cause", None)
    last = (getattr(error, "traceback_str", "") or "").strip().splitlines()[-1:]
    return type(cause).__name__ == "EngineDeadError" or any("EngineDeadError" in t for t in [str(cause), *last])

"""A group of rollout workers: shares each batch by load, survives worker deaths, keeps every worker's weights current.

- Load: a batch is cut into ``workers x chunks_per_worker`` chunks; each worker holds one chunk at a time and
  takes the next when it finishes, so a faster (or less loaded) worker serves more.
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

import torch

from actors.rollout_worker import RolloutRequest, RolloutResult, RolloutWorker
from actors.weight_names import check_names
from actors.weight_transport import WeightPlan, WeightSender, plan_buckets

log = logging.getLogger(__name__)


class LocalWeightSource:
    """The current weights and their sender, in this process (tests, benchmarks, a driver-side learner)."""

    def __init__(self, sender: WeightSender, bucket_mb: float = 64):
        self.sender, self.bucket_mb = sender, bucket_mb
        self.named: dict[str, torch.Tensor] = {}
        self.plan: WeightPlan | None = None

    @property
    def version(self) -> int:
        return self.plan.version if self.plan else 0

    def update(self, named: dict[str, torch.Tensor], version: int) -> WeightPlan:
        self.named = dict(named)
        self.plan = plan_buckets(self.named.items(), version, self.bucket_mb)
        return self.plan

    def listen(self, key: str):
        return self.sender.listen(key)

    def accept(self, key: str) -> None:
        self.sender.accept(key)

    def close(self, key: str) -> None:
        self.sender.close(key)

    def has_channel(self, key: str) -> bool:
        return self.sender.has_channel(key)

    def send(self, keys: list[str]) -> dict[str, str]:
        return self.sender.send(self.plan, self.named, keys)


@dataclass
class Slot:
    name: str
    actor: object
    incarnation: str = ""
    version: int = 0
    ready: bool = False
    state_ref: object = None  # pending state() call while the worker restarts


class RolloutGroup:
    def __init__(self, rollout_cfg, transport_cfg, model_path: str, dtype: str = "float32",
                 source: LocalWeightSource | None = None, num_workers: int | None = None):
        self.cfg, self.transport = rollout_cfg, transport_cfg
        self.model_path, self.dtype, self.source = model_path, dtype, source
        self.slots: dict[str, Slot] = {}
        self._next_id = 0
        self._accepted: set[str] | None = None
        self.events: list[str] = []  # deaths, restarts, re-syncs: for logs and tests
        self.add_workers(num_workers or rollout_cfg.num_workers)

    # -- membership ----------------------------------------------------------------------------------------------
    def _actor_class(self):
        import ray

        return ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus, max_restarts=self.cfg.max_restarts,
            max_task_retries=0, max_concurrency=1,
        )

    def add_workers(self, n: int) -> list[str]:
        import ray

        cls = self._actor_class()
        new = []
        for _ in range(n):
            name = f"rollout-{self._next_id}"
            self._next_id += 1
            self.slots[name] = Slot(name, cls.remote(self.cfg, self.model_path, self.dtype, name))
            new.append(name)
        states = ray.get([self.slots[k].actor.state.remote() for k in new])  # waits for the engines to start
        for k, st in zip(new, states):
            self.slots[k].incarnation = st["incarnation"]
        if self._accepted is None:
            self._accepted = set(ray.get(self.slots[new[0]].actor.accepted_names.remote()))
        self._bring_up_to_date(new)
        return new

    def remove_workers(self, n: int) -> list[str]:
        import ray

        gone = list(self.slots)[-n:] if n > 0 else []
        if len(gone) >= len(self.slots):
            raise ValueError(f"cannot remove {n} of {len(self.slots)} rollout workers: at least one must stay")
        for k in gone:
            ray.kill(self.slots.pop(k).actor, no_restart=True)
            if self.source:
                self.source.close(k)
        return gone

    @property
    def num_workers(self) -> int:
        return len(self.slots)

    # -- weights -------------------------------------------------------------------------------------------------
    def _connect(self, name: str) -> None:
        import ray

        slot = self.slots[name]
        host, port = self.source.listen(name)
        ref = slot.actor.join_weight_channel.remote(host, port, self.transport.timeout_s, self.transport.backend)
        self.source.accept(name)
        ray.get(ref, timeout=self.transport.timeout_s + 30)

    def _bring_up_to_date(self, names: list[str]) -> None:
        """Sends the current weights to the named workers (a new or restarted one joins its channel first)."""
        if self.source is None or self.source.version == 0:
            for k in names:
                self.slots[k].ready = True
            return
        self.sync_weights(names)

    def sync_weights(self, names: list[str] | None = None) -> float:
        """Sends ``source``'s current weights to the workers (default: all ready ones); returns seconds taken."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        plan = self.source.plan
        check_names(plan.names, self._accepted)  # before any tensor moves: a bad name fails alone
        names = names if names is not None else [k for k, s in self.slots.items() if s.ready]
        t0 = time.perf_counter()
        for k in names:
            if not self.source.has_channel(k):
                self._connect(k)
        refs = {k: self.slots[k].actor.receive_weights.remote(plan) for k in names}
        failed = self.source.send(names)
        for k, ref in refs.items():
            try:
                self.slots[k].version = ray.get(ref, timeout=self.transport.timeout_s + 60)
                self.slots[k].ready = k not in failed
            except (RayActorError, GetTimeoutError) as e:
                self._lost(k, f"weight sync: {type(e).__name__}")
        return time.perf_counter() - t0

    def _lost(self, name: str, why: str) -> None:
        """A worker died: stop using it, and ask for its state, which answers once Ray has restarted it."""
        slot = self.slots[name]
        slot.ready = False
        if self.source:
            self.source.close(name)
        slot.state_ref = slot.actor.state.remote()
        self.events.append(f"{name} lost ({why})")
        log.warning("rollout worker %s lost (%s); its prompts go to the others while Ray restarts it", name, why)

    def _rejoin(self, name: str) -> None:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        slot = self.slots[name]
        try:
            st = ray.get(slot.state_ref)
        except ActorUnavailableError:  # still restarting: ask again (the answer comes once it is up)
            time.sleep(0.5)
            slot.state_ref = slot.actor.state.remote()
            return
        except ActorDiedError:  # out of restarts: it is gone for good
            self.slots.pop(name)
            self.events.append(f"{name} removed (no restarts left)")
            return
        slot.state_ref, slot.incarnation, slot.version = None, st["incarnation"], st["version"]
        self._bring_up_to_date([name])
        self.events.append(f"{name} rejoined at weight version {self.slots[name].version}")

    def wait_until_ready(self, timeout_s: float = 300) -> None:
        """Blocks until every restarting worker is back (and has the current weights)."""
        deadline = time.monotonic() + timeout_s
        while any(s.state_ref is not None for s in self.slots.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("rollout workers did not come back in time")
            for k in [k for k, s in self.slots.items() if s.state_ref is not None]:
                self._rejoin(k)

    # -- generation ----------------------------------------------------------------------------------------------
    def generate(self, requests: list[RolloutRequest], step: int = 0, logprobs: bool = False,
                 overrides: dict | None = None) -> list[RolloutResult]:
        """G responses for every request, in request order, whatever happens to individual workers."""
        import ray
        from ray.exceptions import RayActorError

        if not requests:
            return []
        ready = [k for k, s in self.slots.items() if s.ready]
        n_chunks = 1 if len(ready) <= 1 else len(ready) * self.cfg.chunks_per_worker
        size = math.ceil(len(requests) / max(1, n_chunks))
        chunks = [requests[i:i + size] for i in range(0, len(requests), size)]
        queue, results = deque(range(len(chunks))), [None] * len(chunks)
        inflight: dict = {}  # ref -> (worker, chunk index)
        deadline = time.monotonic() + self.cfg.batch_timeout_s
        while queue or inflight:
            busy = {w for w, _ in inflight.values()}
            for k, s in self.slots.items():
                if queue and s.ready and k not in busy:
                    ci = queue.popleft()
                    inflight[s.actor.generate.remote(chunks[ci], step, logprobs, overrides)] = (k, ci)
            restarting = {s.state_ref: k for k, s in self.slots.items() if s.state_ref is not None}
            if not inflight and not restarting:
                raise RuntimeError("every rollout worker is gone; the batch cannot complete")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"rollout batch not done within rollout.batch_timeout_s={self.cfg.batch_timeout_s}")
            done, _ = ray.wait(list(inflight) + list(restarting), num_returns=1, timeout=remaining)
            for ref in done:
                if ref in restarting:
                    self._rejoin(restarting[ref])
                    continue
                worker, ci = inflight.pop(ref)
                try:
                    results[ci] = ray.get(ref)
                except RayActorError as e:  # died, or restarting (ActorUnavailableError)
                    queue.appendleft(ci)  # the whole chunk again, on whoever is free
                    self._lost(worker, type(e).__name__)
        return [r for chunk in results for r in chunk]

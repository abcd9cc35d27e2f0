"""Keeping every rollout worker's weights current: the weight source in the sender's process, and the sync the
rollout group runs (per-worker channels, or one group of every worker with a fallback to the channels).

A worker whose sync failed in any way (channel, transfer, load) gets an outcome saying why and does not serve
until a later sync succeeds; ``RolloutGroup.generate`` retries it before its next batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from actors.weight_names import check_plan_names
from actors.weight_transport import (
    WeightPlan,
    WeightSender,
    WeightTransportError,
    error_reason,
    plan_buckets,
    with_digests,
)

log = logging.getLogger(__name__)

# A receiver has transport.timeout_s for the transfer, then this long to load the weights and reset its caches;
# past that it is stuck and restarted.
LOAD_GRACE_S = 60.0


class LocalWeightSource:
    """The current weights and their sender, in this process (tests, benchmarks, a driver-side learner)."""

    def __init__(self, sender: WeightSender, bucket_mb: float = 64, verify: bool = True):
        """``verify``: each bucket's sha256 goes in the plan, for the receivers to check (``transport.verifies``)."""
        self.sender, self.bucket_mb, self.verify = sender, bucket_mb, verify
        self.named: dict[str, torch.Tensor] = {}
        self.plan: WeightPlan | None = None

    @classmethod
    def for_process(cls, transport, device) -> LocalWeightSource:
        """The source of the process holding the weights (a learner's rank 0): its sender's buckets on ``device``,
        that process's own (``engine.device``), which is where nccl needs them; gloo sends from the CPU."""
        sender = WeightSender(transport.host, transport.timeout_s, transport.backend, device=device)
        return cls(sender, transport.bucket_mb, transport.verifies)

    @property
    def version(self) -> int:
        return self.plan.version if self.plan else 0

    def update(self, named: dict[str, torch.Tensor], version: int, adapter: dict | None = None) -> WeightPlan:
        """The weights to send from now on (``adapter``: they are a LoRA adapter with this peft config)."""
        self.named = dict(named)
        self.plan = plan_buckets(self.named.items(), version, self.bucket_mb, adapter)
        if self.verify:
            with_digests(self.plan, self.named)
        return self.plan

    def listen(self, key: str) -> tuple[str, int, str]:
        return self.sender.listen(key)

    def accept(self, key: str) -> None:
        self.sender.accept(key)

    def close(self, key: str) -> None:
        self.sender.close(key)

    def has_channel(self, key: str) -> bool:
        return self.sender.has_channel(key)

    def send(self, keys: list[str]) -> dict[str, str]:
        return self.sender.send(self.plan, self.named, keys)

    # the group of every worker (transport.scheme=group)
    def open_group(self, receivers: int) -> tuple[str, int, str]:
        from actors.weight_group import BroadcastGroup

        s = self.sender
        self.group = BroadcastGroup(s.host, s.timeout_s, s.backend, s.device)
        return self.group.open(receivers)

    def accept_group(self) -> str:
        self.group.accept()
        return self.group.algorithm

    def send_group(self) -> str | None:
        """None, or why the group send failed (the group is closed then)."""
        try:
            self.group.send(self.plan, self.named)
            return None
        except WeightTransportError as e:
            return str(e)


@dataclass
class SyncReport:
    seconds: float
    outcomes: dict[str, str]  # worker -> "ok" or why it did not get the weights

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.outcomes.items() if v != "ok"]

    @property
    def updated(self) -> list[str]:
        """The workers that now serve the new weights (``seconds`` is spent even when this is empty)."""
        return [k for k, v in self.outcomes.items() if v == "ok"]


class WeightSync:
    """The weight half of ``RolloutGroup`` (its ``slots``, ``source``, ``transport``, ``cfg`` and ``events``)."""

    def _connect(self, name: str) -> None:
        import ray

        slot = self.slots[name]
        if self.cfg.tensor_parallel_size > 1:  # every TP rank would join one two-member channel as its rank 1
            raise WeightTransportError(
                f"{name} is tensor-parallel ({self.cfg.tensor_parallel_size} ranks): it gets "
                "its weights only through the group (transport.scheme=group)"
            )
        host, port, secret = self.source.listen(name)  # the secret travels over Ray's RPC only
        ref = slot.actor.join_weight_channel.remote(
            host, port, self.transport.timeout_s, self.transport.backend, secret
        )
        self.source.accept(name)
        ray.get(ref, timeout=self.transport.timeout_s + 30)

    def _bring_up_to_date(self, names: list[str]) -> None:
        """Sends the current weights to the named workers (a new or restarted one joins its channel first)."""
        if self.source is None or self.source.version == 0:
            for k in names:
                self.slots[k].ready = True
            return
        self.sync_weights(names)

    def sync_weights(self, names: list[str] | None = None) -> SyncReport:
        """Sends ``source``'s current weights to the workers (default: every live one that is not starting).
        Returns each worker's outcome. A worker whose sync failed does not serve until a later sync succeeds
        (``generate`` retries it first); a worker that died is restarted by Ray and rejoins with the weights."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        plan = self.source.plan
        check_plan_names(plan, self._accepted)  # before any tensor moves: a bad name fails alone
        if names is None:
            names = [k for k, s in self.slots.items() if s.state_ref is None]
        t0 = time.perf_counter()
        outcomes: dict[str, str] = {}
        if self.transport.scheme == "group" and names:
            grouped = self._sync_group(plan, names)
            outcomes.update({k: v for k, v in grouped.items() if v == "ok" or v.startswith("lost")})
            names = [k for k in names if k not in outcomes]  # the rest get it over their own channels
        for k in list(names):
            if not self.source.has_channel(k):
                try:
                    self._connect(k)
                except (RayActorError, GetTimeoutError) as e:
                    outcomes[k] = f"channel: {type(e).__name__}"
                except Exception as e:  # noqa: BLE001 - either side failed to form it: this worker only
                    outcomes[k] = f"channel: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        names = [k for k in names if k not in outcomes]
        refs = {k: self.slots[k].actor.receive_weights.remote(plan) for k in names}
        failed = self._send_channels(names) if names else {}
        for k, ref in refs.items():
            try:
                version = ray.get(ref, timeout=self.transport.timeout_s + LOAD_GRACE_S)
                if k in failed:
                    outcomes[k] = f"send: {failed[k]}"
                else:
                    self.slots[k].version, outcomes[k] = version, "ok"
            except (RayActorError, GetTimeoutError) as e:
                outcomes[k] = self._sync_lost(k, e)
            except Exception as e:  # noqa: BLE001 - the worker could not load them: it must not serve a half-loaded model
                outcomes[k] = (
                    f"send: {failed[k]}"
                    if k in failed
                    else f"load: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                )
        for k, why in outcomes.items():
            slot = self.slots.get(k)
            if slot is None or slot.state_ref is not None:
                continue
            slot.ready, slot.needs_sync = why == "ok", why != "ok"
            if why != "ok":
                self.source.close(k)
                self.events.append(f"{k} sync failed ({why})")
                log.warning(
                    "rollout worker %s did not get weight version %d (%s); it waits for the next sync",
                    k,
                    plan.version,
                    why,
                )
        return SyncReport(time.perf_counter() - t0, outcomes)

    def _sync_lost(self, name: str, e: Exception) -> str:
        """A worker whose receive never came back: dead (Ray restarts it), or alive but stuck (seen once: vLLM's
        engine core never answering a cache reset), which is restarted. Either way it rejoins with the weights."""
        from ray.exceptions import GetTimeoutError

        if isinstance(e, GetTimeoutError):
            self._restart(
                name, f"did not finish its weight sync within {self.transport.timeout_s + LOAD_GRACE_S:.0f} s"
            )
        else:
            self._lost(name, f"weight sync: {type(e).__name__}")
        return f"lost: {type(e).__name__}"

    def _send_channels(self, names: list[str]) -> dict[str, str]:
        """The sender's half of a channel sync: receivers that failed (key -> why). A failure of the sender itself
        (its process, its buffers: an exception, or a Ray error from the learner's rank 0) fails every receiver of
        this sync, as an outcome; it never ends the run."""
        try:
            return self.source.send(names)
        except Exception as e:  # noqa: BLE001 - reported per worker; they are retried at the next sync
            why = error_reason(e)
            log.warning("the weight sender failed (%s); no worker got weight version %d", why, self.source.version)
            for k in names:  # a dropped gloo pair makes the receiver's wait fail now, not after its timeout
                try:
                    self.source.close(k)
                except Exception:  # noqa: BLE001 - the sender's process may be gone: nothing left to close
                    pass
            return {k: why for k in names}

    def _sync_group(self, plan: WeightPlan, names: list[str]) -> dict[str, str]:
        """The weights once, to the group of every named worker (rebuilt when the membership changed). A failure
        closes the group (rebuilt at the next sync) and leaves those workers to their own channels."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        members = sorted(names)
        tp = self.cfg.tensor_parallel_size
        if self._group_members != members:
            try:
                self._open_group(members, tp)
            except Exception as e:  # noqa: BLE001 - a worker that cannot join: everyone uses its channel
                self._group_members = None
                log.warning(
                    "weight group of %d workers not formed (%s); syncing over channels",
                    len(members),
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__,
                )
                return {k: f"group: {type(e).__name__}" for k in members}
        refs = {k: self.slots[k].actor.receive_weights.remote(plan, self._group_algorithm) for k in members}
        try:
            error = self.source.send_group()
        except Exception as e:  # noqa: BLE001 - the sender's process failed (a Ray error from rank 0): an outcome
            error = error_reason(e)
        outcomes = {}
        for k, ref in refs.items():
            try:
                version = ray.get(ref, timeout=self.transport.timeout_s + LOAD_GRACE_S)
                if error is None:
                    self.slots[k].version, outcomes[k] = version, "ok"
                else:
                    outcomes[k] = f"group: {error[:200]}"
            except (RayActorError, GetTimeoutError) as e:
                outcomes[k] = self._sync_lost(k, e)
            except Exception as e:  # noqa: BLE001 - its load failed: retried over its channel
                outcomes[k] = f"group: {type(e).__name__}"
        if error is not None or any(v != "ok" for v in outcomes.values()):
            self._group_members = None
            self.events.append(f"weight group failed ({(error or 'a receiver failed')[:120]}); channels this time")
        return outcomes

    def _open_group(self, members: list[str], tp: int) -> None:
        import ray

        host, port, secret = self.source.open_group(len(members) * tp)
        refs = [
            self.slots[k].actor.join_weight_group.remote(
                host, port, 1 + i * tp, 1 + len(members) * tp, self.transport.timeout_s, self.transport.backend, secret
            )
            for i, k in enumerate(members)
        ]
        self._group_algorithm = self.source.accept_group()
        ray.get(refs, timeout=self.transport.timeout_s + 30)
        self._group_members = members
        self.events.append(f"weight group of {len(members)} workers formed")

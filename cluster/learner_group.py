"""The learner as Ray actors: ``learner.num_ranks`` processes in one placement group forming a DeepSpeed world
themselves (MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK set from Ray, as OpenRLHF does).

Every rank runs every step, checkpoint and weight gather (ZeRO-3 gathers and saves are collectives, so nothing
hangs on rank-0-only code); rank 0 also owns the weight version and the sender of the weight transport, and is the
only one that writes the Hugging Face copy. ``LearnerGroup`` is also the ``RolloutGroup``'s weight source: the
weights it sends are a snapshot taken after an update (``publish``), never parameters a running update is changing.
"""

from __future__ import annotations

import os
import sys

import ray

from actors.cluster_view import lacking, start_clock
from actors.weight_transport import WeightPlan

# The weight channel's methods run beside a long update on rank 0 (a restarted rollout worker may rejoin mid-step):
# they touch only the published snapshot, never the live parameters.
WEIGHTS = "weights"
HEALTH = "health"  # answers while the other groups are busy (or stuck in a collective with a lost peer)


class LearnerLost(ray.exceptions.RayError):
    """A learner rank's host went away mid-run: the run stops (its world cannot go on without the rank). A Ray
    error, so that commands print it as their one-line error."""


@ray.remote(concurrency_groups={WEIGHTS: 1, HEALTH: 1})
class LearnerRank:
    def __init__(self, rank: int, world: int):
        # importing deepspeed imports MLflow when it is installed (its autotuner's optional logging): ~1.2 s of every
        # rank's start; a rank never logs to a tracker (the driver does), so in this process MLflow reads as absent
        sys.modules.setdefault("mlflow", None)
        self.rank, self.world = rank, world
        self.learner = None
        self.source = None

    @ray.method(concurrency_group=HEALTH)
    def host(self) -> tuple[str, str]:
        """``hostname (ip)`` and the Ray node id of this rank's host."""
        import socket

        return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})", ray.get_runtime_context().get_node_id()

    def address(self) -> tuple[str, int]:
        """Rank 0's: the world's store address, its port held from now until ``setup`` serves the store on it."""
        from learner.deepspeed_setup import reserve_store_port

        ip = ray.util.get_node_ip_address()
        return ip, reserve_store_port(ip)

    def setup(self, cfg, model_path: str, master: tuple[str, int], with_reference: bool, transport=None) -> dict:
        from learner.deepspeed_setup import pin_interface

        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world),
            LOCAL_RANK="0",
            MASTER_ADDR=master[0],
            MASTER_PORT=str(master[1]),
        )
        pin_interface(ray.util.get_node_ip_address())  # the world's connections on the node's Ray address
        # Ray gives each actor its GPU (CUDA_VISIBLE_DEVICES), so the local rank inside it is always 0.
        from learner.engine import Learner

        self.learner = Learner(cfg, model_path, with_reference=with_reference)
        if self.rank == 0 and transport is not None:
            from actors.weight_sync import LocalWeightSource

            # the sender's buckets on the learner's own device: nccl moves CUDA tensors only (gloo: the CPU)
            self.source = LocalWeightSource.for_process(transport, self.learner.engine.device)
        return {"step": self.learner.step, "frozen_params": self.learner.frozen_params}

    # -- steps (every rank, its own shard) -------------------------------------------------------------------------
    def sft_step(self, items: list, indices: list[int]) -> dict:
        from learner.engine import sft_targets

        chosen = [items[i] for i in indices]
        loss = self.learner.sft_step(chosen, sft_targets(self.learner.processor.tokenizer, chosen))
        return {"loss": loss, "skipped_steps": self.learner.skipped_steps, "rows": len(chosen)}

    def rl_step(self, items: list, rollouts: list[dict], group_size: int, zero_perception: bool) -> dict:
        from learner.engine import Rollout

        batch = [Rollout(item=items[r.pop("prompt_index")], **r) for r in rollouts]
        return self.learner.rl_step(batch, group_size, zero_perception)

    def reset_reference(self) -> None:
        self.learner.reset_reference()

    def run(self, fn):
        """Runs ``fn(learner)`` on this rank (tests inject faults this way)."""
        return fn(self.learner)

    # -- weights -------------------------------------------------------------------------------------------------
    def publish(self, version: int) -> dict | None:
        """Every rank gathers (ZeRO-3); rank 0 (the sender's) keeps a CPU snapshot and returns its plan."""
        named = self.learner.state_dict_for_rollout(keep=self.source is not None)
        if self.source is None:
            return None
        return self.source.update(named, version, self.learner.rollout_adapter_config()).to_dict()

    @ray.method(concurrency_group=WEIGHTS)
    def listen(self, key: str):
        return self.source.listen(key)

    @ray.method(concurrency_group=WEIGHTS)
    def accept(self, key: str) -> None:
        self.source.accept(key)

    @ray.method(concurrency_group=WEIGHTS)
    def close(self, key: str) -> None:
        self.source.close(key)

    @ray.method(concurrency_group=WEIGHTS)
    def send(self, keys: list[str]) -> dict[str, str]:
        return self.source.send(keys)

    @ray.method(concurrency_group=WEIGHTS)
    def open_group(self, receivers: int):
        return self.source.open_group(receivers)

    @ray.method(concurrency_group=WEIGHTS)
    def accept_group(self) -> str:
        return self.source.accept_group()

    @ray.method(concurrency_group=WEIGHTS)
    def send_group(self) -> str | None:
        return self.source.send_group()

    # -- checkpoints (every rank) ------------------------------------------------------------------------------
    def save(self, directory: str, with_hf: bool = True) -> None:
        self.learner.save(directory, with_hf)

    def save_hf(self, directory: str) -> None:
        self.learner.save_hf(directory)

    def load(self, directory: str) -> int:
        return self.learner.load(directory)


class LearnerGroup:
    """The learner ranks, driven together. Also the rollout workers' weight source (rank 0's sender)."""

    def __init__(
        self,
        cfg,
        model_path: str,
        with_reference: bool = True,
        transport=None,
        lr: float | None = None,
        warmup_steps: int | None = None,
        timeout_s: float = 600,
    ):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        lcfg = cfg.learner
        if lr is not None:  # SFT has its own learning rate (and, being its own engine, its own optimizer state)
            lcfg = lcfg.model_copy(update={"lr": lr, "warmup_steps": warmup_steps or 0})
        self.cfg, self.world = lcfg, lcfg.num_ranks
        bundle = {"CPU": lcfg.num_cpus, **({"GPU": lcfg.num_gpus} if lcfg.num_gpus else {}), **lcfg.resources}
        self.placement_group = ray.util.placement_group([bundle] * self.world, strategy="PACK")
        clock, ready = start_clock(timeout_s, "learner ranks"), self.placement_group.ready()
        while not ray.wait([ready], timeout=clock.step())[0]:  # the clock stops while the autoscaler adds nodes
            if clock.expired():
                ray.util.remove_placement_group(self.placement_group)
                raise RuntimeError(
                    f"the cluster has no room for the learner within {timeout_s:.0f} s: "
                    f"{lacking(bundle, self.world)}: lower learner.num_ranks / num_cpus / num_gpus, "
                    "or add nodes"
                )
        self.ranks = [
            LearnerRank.options(
                num_cpus=lcfg.num_cpus,
                num_gpus=lcfg.num_gpus,
                resources=dict(lcfg.resources),
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=i
                ),
                runtime_env={
                    "env_vars": {
                        "OMP_NUM_THREADS": str(max(1, int(lcfg.num_cpus))),
                        **({} if lcfg.num_gpus else {"DS_ACCELERATOR": "cpu"}),
                    }
                },
            ).remote(i, self.world)
            for i in range(self.world)
        ]
        self.step, self.hosts = 0, [(f"rank {i}", None) for i in range(self.world)]
        self.hosts = self._get([r.host.remote() for r in self.ranks])
        master = self._get(self.ranks[0].address.remote())
        infos = self._get(
            [
                r.setup.remote(lcfg, model_path, master, with_reference, transport if i == 0 else None)
                for i, r in enumerate(self.ranks)
            ]
        )
        self.step = infos[0]["step"]
        self.plan: WeightPlan | None = None
        self._channels: set[str] = set()

    @property
    def rank0(self):
        return self.ranks[0]

    def _get(self, refs):
        """``ray.get`` of rank calls; a failure because a rank's host is gone (a collective reset by the lost peer,
        or the rank's actor dead) is reported as that host lost, with how to go on."""
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            lost = self._unreachable()
            if not lost:
                raise
            # the world cannot go on: its group goes now, or Ray 2.60's GCS re-places the dead node's bundle with no
            # back-off until the job ends (see RolloutGroup._replace_if_node_died)
            ray.util.remove_placement_group(self.placement_group)
            raise LearnerLost(
                f"learner {', '.join(lost)} lost (its host is unreachable or its Ray node died) at "
                f"step {self.step}; once the host is back, run the same command with "
                "run.resume=auto to continue from the last checkpoint in run.out_dir"
            ) from e

    def _unreachable(self, wait_s: float = 60.0, settle_s: float = 45.0) -> list[str]:
        """The ranks whose host is gone, as ``rank N on host (ip)``: on a node Ray declared dead, or no answer
        within ``wait_s`` (long enough for Ray to declare a silent node dead with its default health checks). A
        rank whose actor died while its node stays alive for ``settle_s`` (out of memory, a crash) is not a lost
        host: its own error is the story. Its death is often known before its node's (every process of a crashed
        host dies at once; the health checks take seconds more), hence the wait."""
        import time

        t0 = time.monotonic()
        unsettled = {i for i, (_, node) in enumerate(self.hosts) if node is not None}  # started ones only
        lost: list[int] = []
        while unsettled and time.monotonic() - t0 < wait_s:
            pings = {i: self.ranks[i].host.remote() for i in sorted(unsettled)}
            ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=2.0)
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            for i, ref in pings.items():
                if self.hosts[i][1] not in alive:
                    lost.append(i)
                    unsettled.discard(i)
                elif ref in ready:
                    try:
                        ray.get(ref)
                        unsettled.discard(i)  # it answers: its host is there
                    except ray.exceptions.RayError:
                        if time.monotonic() - t0 > settle_s:
                            unsettled.discard(i)  # dead on a node that stays alive
                        else:
                            time.sleep(1.0)
        lost += sorted(unsettled)  # never answered
        return [f"rank {i} on {self.hosts[i][0]}" for i in sorted(lost)]

    # -- steps ----------------------------------------------------------------------------------------------------
    def sft_step(self, items_ref, n: int) -> dict:
        shards = _shards(list(range(n)), self.world)
        outs = self._get([r.sft_step.remote(items_ref, s) for r, s in zip(self.ranks, shards)])
        self.step += 1
        return {"loss": sum(o["loss"] for o in outs) / len(outs), "skipped_steps": outs[0]["skipped_steps"]}

    def rl_step_async(self, items_ref, rollouts: list[dict], group_size: int, zero_perception: bool) -> list:
        """Starts an update on every rank (whole groups per rank); ``finish_rl_step`` collects it."""
        groups = [rollouts[i : i + group_size] for i in range(0, len(rollouts), group_size)]
        shards = [[r for g in part for r in g] for part in _shards(groups, self.world)]
        return [r.rl_step.remote(items_ref, s, group_size, zero_perception) for r, s in zip(self.ranks, shards)]

    def finish_rl_step(self, refs: list) -> dict:
        outs = self._get(refs)
        self.step += 1
        return merge_rank_stats(outs)

    def reset_reference(self) -> None:
        self._get([r.reset_reference.remote() for r in self.ranks])

    # -- weights (the RolloutGroup's source) ---------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.plan.version if self.plan else 0

    def publish(self, version: int) -> WeightPlan:
        plans = self._get([r.publish.remote(version) for r in self.ranks])
        self.plan = WeightPlan.from_dict(plans[0])
        return self.plan

    def listen(self, key: str):
        return self._get(self.rank0.listen.remote(key))

    def accept(self, key: str) -> None:
        self._get(self.rank0.accept.remote(key))

    def close(self, key: str) -> None:
        self._channels.discard(key)
        self._get(self.rank0.close.remote(key))

    def has_channel(self, key: str) -> bool:
        return key in self._channels

    def send(self, keys: list[str]) -> dict[str, str]:
        failed = self._get(self.rank0.send.remote(keys))
        self._channels.update(k for k in keys if k not in failed)
        self._channels.difference_update(failed)
        return failed

    def open_group(self, receivers: int):
        return self._get(self.rank0.open_group.remote(receivers))

    def accept_group(self) -> str:
        return self._get(self.rank0.accept_group.remote())

    def send_group(self) -> str | None:
        return self._get(self.rank0.send_group.remote())

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, directory: str, with_hf: bool = True) -> None:
        self._get([r.save.remote(directory, with_hf) for r in self.ranks])

    def save_hf(self, directory: str) -> None:
        self._get([r.save_hf.remote(directory) for r in self.ranks])

    def load(self, directory: str) -> int:
        steps = self._get([r.load.remote(directory) for r in self.ranks])
        self.step = steps[0]
        return self.step

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        ray.util.remove_placement_group(self.placement_group)


def _shards(xs: list, parts: int) -> list[list]:
    size = len(xs) // parts
    if size * parts != len(xs):
        raise ValueError(f"{len(xs)} items cannot be shared evenly by {parts} learner ranks")
    return [xs[i * size : (i + 1) * size] for i in range(parts)]


def merge_rank_stats(outs: list[dict]) -> dict:
    """Counts add up over ranks; everything else is the ranks' mean (their shards are the same size)."""
    counts = {
        "unsplittable",
        "flat_groups_perception",
        "flat_groups_reasoning",
        "flat_groups",
        "trained_tokens",
        "perception_tokens",
        "reasoning_tokens",
        "vision_tower_calls",
    }
    merged = {}
    for k in outs[0]:
        vals = [o[k] for o in outs]
        if k in counts:
            merged[k] = sum(vals)
        elif k in ("lr", "skipped_steps", "nonfinite_losses"):  # the same on every rank (a skip is global)
            merged[k] = max(vals)
        else:
            merged[k] = sum(vals) / len(vals)
    return merged

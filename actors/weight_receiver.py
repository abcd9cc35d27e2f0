"""The receiving end of the weight transport, inside each vLLM worker process.

vLLM mixes this class into its worker (``LLM(worker_extension_cls="actors.weight_receiver.WeightReceiver")``);
``LLM.collective_rpc("videop2r_...")`` calls its methods there. Tensors arrive over the torch.distributed channel
(``actors.weight_transport``); only the small plan travels through the RPC. Weights are loaded with the worker's
own in-place reload (``reload_weights``), which works on the CPU backend where ``model.load_weights`` after
start-up does not (linear weights are repacked after loading). A LoRA adapter (``WeightPlan.adapter``) is written
to this engine's adapter folder instead (``actors.adapter_files``), for the rollout worker to serve it.
"""

from __future__ import annotations

from actors.adapter_files import write_adapter
from actors.weight_names import accepted_names, check_plan_names
from actors.weight_group import receive_relayed
from actors.weight_transport import WeightPlan, join_channel, receive_tensors, transport_device


class WeightReceiver:
    def _videop2r_buffers(self):
        """Where received buckets land: this worker's own GPU on nccl (each tensor-parallel rank its own), the CPU
        on gloo."""
        return transport_device(self._videop2r_backend, getattr(self, "device", "cpu"))

    def videop2r_join(self, host: str, port: int, timeout_s: float, backend: str = "gloo", secret: str = "") -> bool:
        self._videop2r_backend = backend
        self._videop2r_buffers()  # nccl on a CPU worker: refused before joining, so the sender's accept fails fast
        self._videop2r_pg = join_channel(host, port, timeout_s, backend, secret=secret)
        return True

    def videop2r_accepted_names(self) -> list[str]:
        if getattr(self, "_videop2r_names", None) is None:
            self._videop2r_names = accepted_names(self.vllm_config.model_config.model)
        return sorted(self._videop2r_names)

    def videop2r_check(self, plan: dict) -> bool:
        """Validates the names before any tensor moves, so a bad plan fails alone instead of mid-transfer."""
        plan = WeightPlan.from_dict(plan)
        self.videop2r_accepted_names()
        check_plan_names(plan, self._videop2r_names)
        return True

    def _videop2r_load(self, plan: WeightPlan, tensors) -> int:
        if plan.adapter is None:
            self.reload_weights(weights_iterator=tensors)
        elif int(getattr(self, "rank", 0) or 0) == 0:
            self._videop2r_adapter = write_adapter(plan.version, plan.adapter, tensors)
        else:  # another tensor-parallel rank of the same engine (one host): rank 0's folder serves them all
            for _ in tensors:
                pass
        self._videop2r_version = plan.version
        return plan.version

    def videop2r_adapter_path(self) -> str | None:
        """The folder of the newest adapter this worker wrote (tensor-parallel rank 0), or None."""
        return getattr(self, "_videop2r_adapter", None)

    def videop2r_receive(self, plan: dict) -> int:
        plan = WeightPlan.from_dict(plan)
        pg = getattr(self, "_videop2r_pg", None)
        if pg is None:
            raise RuntimeError("no weight channel: call videop2r_join first")
        return self._videop2r_load(plan, receive_tensors(pg, plan, self._videop2r_buffers()))

    def videop2r_join_group(
        self,
        host: str,
        port: int,
        first_rank: int,
        world: int,
        timeout_s: float,
        backend: str = "gloo",
        secret: str = "",
    ) -> bool:
        """Joins the weight group of every worker: this worker's tensor-parallel rank r is group rank
        ``first_rank + r``, so every TP rank receives (each loads its own shard of the full tensors)."""
        rank = first_rank + int(getattr(self, "rank", 0) or 0)
        self._videop2r_backend = backend
        self._videop2r_buffers()
        self._videop2r_group = (
            join_channel(host, port, timeout_s, backend, rank=rank, world=world, secret=secret),
            rank,
            world,
        )
        return True

    def videop2r_receive_group(self, plan: dict, algorithm: str) -> int:
        plan = WeightPlan.from_dict(plan)
        group = getattr(self, "_videop2r_group", None)
        if group is None:
            raise RuntimeError("no weight group: call videop2r_join_group first")
        pg, rank, world = group
        device = self._videop2r_buffers()
        tensors = (
            receive_relayed(pg, plan, rank, world, device)
            if algorithm == "relay"
            else receive_tensors(pg, plan, device)
        )
        return self._videop2r_load(plan, tensors)

    def videop2r_version(self) -> int:
        return getattr(self, "_videop2r_version", 0)

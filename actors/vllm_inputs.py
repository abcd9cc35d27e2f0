"""vLLM engine arguments and prompts for the Qwen-VL families (``videoqa.families``) on videos, from the run
config. No vLLM import here, so the driver can build them anywhere; the engine-hosting code passes them to
``vllm.LLM``.

CPU vs GPU is configuration only: ``rollout.device`` picks the KV-cache sizing (``VLLM_CPU_KVCACHE_SPACE`` on the
CPU build, ``gpu_memory_utilization`` on CUDA); the rest is the same call.
"""

from __future__ import annotations

import os

from videoqa.families import video_normalisation_differs
from videoqa.loader import LoadedSample
from videoqa.prompts import chat_messages


def engine_in_process(engine, in_actor: bool) -> bool:
    """Whether vLLM's engine core runs in the calling process (``engine.engine_in_process``; automatic: inside a Ray
    actor on the CPU with one tensor-parallel rank). Only an actor's process is the engine's alone: elsewhere (a
    test session, a benchmark) the engine's worker would set up torch.distributed's default group in the caller."""
    if engine.engine_in_process is not None:
        return engine.engine_in_process
    return in_actor and engine.device == "cpu" and engine.tensor_parallel_size == 1


def engine_kwargs(rollout, model_path: str, dtype: str = "float32", seed: int = 0, in_process: bool = False) -> dict:
    """Keyword arguments for ``vllm.LLM`` (``rollout`` is a ``RolloutSection``; ``in_process``: see
    ``engine_in_process``)."""
    kw = dict(
        model=model_path,
        dtype=dtype,
        seed=seed,
        max_model_len=rollout.max_model_len,
        tensor_parallel_size=rollout.tensor_parallel_size,
        limit_mm_per_prompt={"video": 1, "image": 1},
        enable_prefix_caching=True,
        enforce_eager=rollout.device == "cpu" if rollout.enforce_eager is None else rollout.enforce_eager,
        use_tqdm_on_load=os.environ.get("VIDEOP2R_QUIET") != "1",  # the weight-loading bar, unless --verbose is off
    )
    if video_normalisation_differs(model_path):  # vLLM would normalise videos with the image statistics
        kw["mm_device_do_normalize"] = False
    if in_process:
        kw["distributed_executor_backend"] = "uni"  # the model in this process too, not in a worker process
    elif rollout.tensor_parallel_size > 1:
        # the engine's TP ranks are processes of this Ray actor, on the resources Ray gave it (inside an actor vLLM
        # would otherwise place them as Ray tasks of its own, through the cluster's GCS)
        kw["distributed_executor_backend"] = "mp"
    if rollout.device == "cuda":
        kw["gpu_memory_utilization"] = rollout.gpu_memory_utilization
    else:
        # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a request with its own seed
        # has its prefill split across steps; per-request seeds are how rollouts stay reproducible, so prompts
        # are prefilled whole on the CPU.
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(rollout.max_model_len, 8192)
    return kw


SERVED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices


def lora_engine_kwargs(rank: int) -> dict:
    """Engine arguments for serving one LoRA adapter of ``rank`` at a time (``learner.lora.sync=adapter``; 0: none).
    vLLM takes a few fixed ranks; the smallest one that holds ``rank`` serves it."""
    if rank <= 0:
        return {}
    fits = [r for r in SERVED_LORA_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({SERVED_LORA_RANKS[-1]})")
    return {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1}


def engine_env(rollout, in_process: bool = False) -> dict[str, str]:
    """Environment the engine process needs before vLLM is imported."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}
    if rollout.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(rollout.kv_cache_gib))))
        # The engine's compute threads follow the CPUs the worker was given (Ray sets this inside actors; an
        # engine started in a plain process gets the same, instead of oversubscribing the cores).
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(max(1, int(rollout.num_cpus)))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"))
    return env


def render_prompt(tokenizer, item: LoadedSample, style: str = "process") -> str:
    """The chat-formatted prompt text, with one video/image placeholder that vLLM expands."""
    return tokenizer.apply_chat_template(chat_messages(item.sample, style), tokenize=False, add_generation_prompt=True)


def vllm_prompt(tokenizer, item: LoadedSample, style: str = "process") -> dict:
    """A vLLM prompt dict: text plus the decoded frames (with metadata) or the image."""
    if item.video is not None:
        mm = {"video": (item.video.frames, item.video.vllm_metadata())}
    else:
        mm = {"image": item.image}
    return {"prompt": render_prompt(tokenizer, item, style), "multi_modal_data": mm}

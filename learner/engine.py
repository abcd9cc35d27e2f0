"""The DeepSpeed learner for Qwen2.5-VL: SFT (stage 1) and PA-GRPO / GRPO updates (stage 2), checkpoints, and the
weights it sends to the rollout workers.

One process by default (``deepspeed.init_distributed`` on a single rank: gloo on the CPU, nccl on a GPU). Several
processes come from the ``deepspeed`` launcher, which sets RANK / WORLD_SIZE / MASTER_ADDR for each; the code is
the same. The reference model for the KL term is a frozen copy of the starting (SFT) weights in the same process.
"""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from learner.advantages import process_advantages
from learner.batch import build_inputs, prompt_inputs, response_logprobs
from learner.loss import policy_loss, token_advantages
from learner.masks import process_masks


def _init_distributed(backend: str) -> None:
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a single process, not started by a launcher
        from cluster.services import free_port

        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(dist_backend=backend)


def ds_config(cfg) -> dict:
    """The DeepSpeed config from a ``LearnerSection``."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": 1e-8,
                                                  "weight_decay": cfg.weight_decay, "torch_adam": True}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


@dataclass
class Rollout:
    """One generated response to learn from, with its prompt and its process rewards."""

    item: object  # videoqa.loader.LoadedSample
    response_ids: list[int]
    r_perception: float
    r_reasoning: float
    perception_valid: bool = True


class Learner:
    def __init__(self, cfg, model_path: str, with_reference: bool = True):
        import deepspeed
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.cfg = cfg.learner
        _init_distributed(self.cfg.backend)
        dtype = torch.bfloat16 if self.cfg.dtype == "bfloat16" else torch.float32
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
        frozen = 0
        for name, p in model.named_parameters():
            if any(name.startswith(prefix) for prefix in self.cfg.freeze):
                p.requires_grad_(False)
                frozen += p.numel()
        self.frozen_params = frozen
        self.reference = None
        if with_reference and self.cfg.beta > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer_holder = {}

        def scheduler(optimizer):
            optimizer_holder["opt"] = optimizer
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg))

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=ds_config(self.cfg), lr_scheduler=scheduler
        )
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model_config = model.config
        self.step = 0
        self.nonfinite_losses = 0

    # -- scoring ----------------------------------------------------------------------------------------------
    def logprobs(self, items, responses, model=None, prompts=None) -> torch.Tensor:
        """log-probs (B, R) of generated ids under ``model`` (default: the policy), without gradients."""
        batch = build_inputs(self.processor, self.model_config, items, responses, prompts)
        with torch.no_grad():
            return response_logprobs(model or self.engine, batch)

    def _backward_step(self, loss: torch.Tensor) -> None:
        """Backward and (at the accumulation boundary) an optimizer step.

        A non-finite loss or gradient must not move the weights. DeepSpeed's ZeRO optimizer checks the global
        gradient norm before stepping and skips the step (zeroing the gradients, counting ``skipped_steps``) when
        it is not finite; a non-finite loss makes the gradients non-finite, so it takes the same path.
        """
        if not torch.isfinite(loss.detach()):
            self.nonfinite_losses += 1
        self.engine.backward(loss)
        self.engine.step()

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps not applied because the loss or the gradient was not finite."""
        return int(getattr(self.engine, "skipped_steps", 0))

    # -- stage 1: SFT -------------------------------------------------------------------------------------------
    def sft_step(self, items, targets: list[list[int]]) -> float:
        """One optimizer step of next-token loss on the target ids (prompt tokens masked), accumulated over
        ``grad_accum`` micro-batches."""
        losses = []
        for chunk in _split(list(range(len(items))), self.cfg.grad_accum):
            batch = build_inputs(self.processor, self.model_config, [items[i] for i in chunk], [targets[i] for i in chunk])
            lp = response_logprobs(self.engine, batch)
            loss = -(lp.sum() / batch.response_mask.sum().clamp(min=1))
            self._backward_step(loss)
            losses.append(float(loss.detach()))
        self.step += 1
        return float(np.mean(losses))

    # -- stage 2: PA-GRPO / GRPO --------------------------------------------------------------------------------
    def rl_step(self, rollouts: list[Rollout], group_size: int) -> dict:
        """One update on a rollout batch laid out group after group (G responses of a prompt side by side)."""
        cfg = self.cfg
        tok = self.processor.tokenizer
        r_p = torch.tensor([r.r_perception for r in rollouts])
        r_r = torch.tensor([r.r_reasoning for r in rollouts])
        valid = torch.tensor([r.perception_valid for r in rollouts])
        a_p, a_r, adv_stats = process_advantages(r_p, r_r, group_size, cfg.algorithm, valid)
        items = [r.item for r in rollouts]
        responses = [r.response_ids for r in rollouts]
        # one processor call per prompt, shared by its group
        prompts, cache = [], {}
        for it in items:
            key = id(it)
            if key not in cache:
                cache[key] = prompt_inputs(self.processor, it)
            prompts.append(cache[key])
        R = max(1, max(len(x) for x in responses))
        m_p, m_r = torch.zeros(len(rollouts), R), torch.zeros(len(rollouts), R)
        unsplittable = 0
        for i, ids in enumerate(responses):
            mp_, mr_, ok = process_masks(tok, ids)
            m_p[i, : len(ids)], m_r[i, : len(ids)] = mp_, mr_
            unsplittable += not ok
        adv = token_advantages(a_p, a_r, m_p, m_r)
        # log-probs of the policy that sampled (before this update) and of the frozen reference
        old, ref = [], []
        for chunk in _chunks(list(range(len(rollouts))), cfg.micro_batch_size):
            its, resp, prm = [items[i] for i in chunk], [responses[i] for i in chunk], [prompts[i] for i in chunk]
            old.append(_pad(self.logprobs(its, resp, prompts=prm), R))
            if self.reference is not None:
                ref.append(_pad(self.logprobs(its, resp, model=self.reference, prompts=prm), R))
        old_lp = torch.cat(old)
        ref_lp = torch.cat(ref) if ref else None
        losses, stats_acc = [], []
        order = list(range(len(rollouts)))
        per_mb = math.ceil(len(order) / cfg.minibatches)
        if per_mb < cfg.grad_accum:
            raise ValueError(f"a minibatch of {per_mb} rollouts cannot be split into learner.grad_accum={cfg.grad_accum} "
                             "micro-batches: lower grad_accum or minibatches")
        for _ in range(cfg.update_epochs):
            for mb in _chunks(order, per_mb):
                for chunk in _split(mb, cfg.grad_accum):  # exactly grad_accum micro-steps: one optimizer step
                    batch = build_inputs(self.processor, self.model_config, [items[i] for i in chunk],
                                         [responses[i] for i in chunk], [prompts[i] for i in chunk])
                    lp = _pad(response_logprobs(self.engine, batch), R)
                    idx = torch.tensor(chunk)
                    mask = (m_p[idx] + m_r[idx] > 0).float()
                    loss, st = policy_loss(lp, old_lp[idx], None if ref_lp is None else ref_lp[idx], adv[idx], mask,
                                           cfg.clip_eps, cfg.beta, cfg.aggregation)
                    self._backward_step(loss)
                    losses.append(float(loss.detach()))
                    stats_acc.append(st)
        self.step += 1
        out = {"loss": float(np.mean(losses)), "unsplittable": unsplittable, **adv_stats,
               "skipped_steps": self.skipped_steps, "lr": self.scheduler.get_last_lr()[0]}
        for k in ("kl", "clip_fraction", "ratio_mean"):
            out[k] = float(np.mean([s[k] for s in stats_acc]))
        return out

    def reset_reference(self) -> None:
        """The frozen KL reference becomes the current policy (call it after SFT: PA-GRPO's reference is the SFT
        model)."""
        if self.reference is not None:
            self.reference.load_state_dict(self.state_dict_for_rollout(), strict=False)

    # -- weights out ---------------------------------------------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full parameters under their Hugging Face names (gathered one at a time under ZeRO-3), on the CPU."""
        import deepspeed

        module = self.engine.module
        for name, p in module.named_parameters():
            if hasattr(p, "ds_id"):  # ZeRO-3 partitioned
                with deepspeed.zero.GatheredParameters([p]):
                    yield name, p.detach().to("cpu", copy=True)
            else:
                yield name, p.detach().to("cpu")

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        return dict(self.named_weights())

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """DeepSpeed state (model, optimizer, scheduler) + RNG states + step, and a Hugging Face copy under hf/."""
        directory = Path(directory)
        client = {"step": self.step, "nonfinite_losses": self.nonfinite_losses, "rng": _rng_state()}
        self.engine.save_checkpoint(str(directory), tag=f"step{self.step}", client_state=client)
        hf = directory / "hf"
        module = self.engine.module
        state = self.state_dict_for_rollout()
        module.save_pretrained(hf, state_dict=state)
        self.processor.save_pretrained(hf)
        return directory

    def load(self, directory: str | Path, tag: str | None = None) -> int:
        _, client = self.engine.load_checkpoint(str(directory), tag=tag)
        if client is None:
            raise FileNotFoundError(f"no learner checkpoint in {directory}")
        self.step = client["step"]
        self.nonfinite_losses = client.get("nonfinite_losses", 0)
        _set_rng_state(client["rng"])
        return self.step


def _chunks(xs: list, n: int) -> list[list]:
    n = max(1, n)
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def _split(xs: list, parts: int) -> list[list]:
    """``xs`` in exactly ``parts`` near-equal contiguous pieces (each non-empty when len(xs) >= parts), so that
    DeepSpeed's accumulation boundary falls at the end of every optimizer step."""
    if len(xs) < parts:
        raise ValueError(f"{len(xs)} samples cannot fill learner.grad_accum={parts} micro-batches")
    bounds = [round(i * len(xs) / parts) for i in range(parts + 1)]
    return [xs[bounds[i]:bounds[i + 1]] for i in range(parts)]


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[1] == width else torch.nn.functional.pad(t, (0, width - t.shape[1]))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])

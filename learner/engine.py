"""The DeepSpeed learner for Qwen2.5-VL and Qwen3-VL (``videoqa.families``): SFT (stage 1) and PA-GRPO / GRPO
updates (stage 2), checkpoints, and the weights it sends to the rollout workers.

One process by default (``deepspeed.init_distributed`` on a single rank: gloo on the CPU, nccl on a GPU). Several
processes come from the ``deepspeed`` launcher, which sets RANK / WORLD_SIZE / MASTER_ADDR for each; the code is
the same. The reference model for the KL term is a frozen copy of the starting (SFT) weights in the same process.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from learner.advantages import process_advantages
from learner.batch import build_inputs, prompt_inputs, response_logprobs
from learner.vision_features import SharedVisionFeatures, tower_frozen
from learner.deepspeed_setup import collective_device, ds_config, init_distributed, lr_lambda, most_on_any_rank
from learner.micro_batches import pad_to, padding_fraction, split, token_budget, token_share
from learner.loss import importance_weights, policy_loss, token_advantages
from learner.lora import adapters_off, apply_lora, base_model
from learner.masks import process_masks
from learner.weights_out import LearnerWeights
from videoqa.families import family_of


@dataclass
class Rollout:
    """One generated response to learn from, with its prompt and its process rewards."""

    item: object  # videoqa.loader.LoadedSample
    response_ids: list[int]
    r_perception: float
    r_reasoning: float
    perception_valid: bool = True
    behaviour_logprobs: list[float] | None = None  # vLLM's log-prob of each sampled token
    stale: bool = False  # sampled by older weights than the learner's: corrected by truncated importance sampling


class Learner(LearnerWeights):
    def __init__(self, cfg, model_path: str, with_reference: bool = True):
        """``cfg`` is a ``LearnerSection`` (or a whole run config, whose ``learner`` section is used)."""
        import deepspeed
        import transformers
        from transformers import AutoProcessor

        self.cfg = getattr(cfg, "learner", cfg)
        init_distributed(self.cfg.backend)
        dtype = torch.bfloat16 if self.cfg.dtype == "bfloat16" else torch.float32
        self.family = family_of(model_path)  # Qwen2.5-VL or Qwen3-VL, from the checkpoint's config.json
        model = getattr(transformers, self.family.model_class).from_pretrained(model_path, dtype=dtype)
        frozen = 0
        for name, p in model.named_parameters():
            if any(name.startswith(prefix) for prefix in self.cfg.freeze):
                p.requires_grad_(False)
                frozen += p.numel()
        self.frozen_params = frozen
        if self.cfg.gradient_checkpointing:  # activations recomputed in the backward: memory for compute
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # transformers then hooks every input embedding to require grad, the vision tower's patch embedding
            # included: the frozen tower joined the autograd graph (its activations kept, its 32 blocks run
            # backward and, checkpointed, recomputed: +6.3 s of an 11 s 3B step on an H200, docs/gpu-check.md). Non-reentrant checkpointing needs no input that requires grad, so the hooks go.
            model.disable_input_require_grads()
            model.config.use_cache = False
            model.train()  # transformers checkpoints only in training mode (Qwen2.5-VL has no dropout to change)
        lora = self.cfg.lora
        if lora.rank > 0:  # adapters on the language model; everything else frozen
            targets = lora.target_modules or self.family.lora_targets
            model = apply_lora(model, lora.rank, lora.alpha, lora.dropout, targets)
            if self.cfg.gradient_checkpointing:  # peft hooks the input embeddings again: see above
                base_model(model).disable_input_require_grads()
        self.reference = None
        # The KL reference: a frozen copy of the starting weights; with LoRA the same model with its adapters off
        self._reference_is_base = with_reference and self.cfg.beta > 0 and lora.rank > 0
        if with_reference and self.cfg.beta > 0 and lora.rank == 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer_holder = {}

        def scheduler(optimizer):
            optimizer_holder["opt"] = optimizer
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg))

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=ds_config(self.cfg), lr_scheduler=scheduler
        )
        if self.reference is not None:  # the frozen KL reference sits beside the policy (cuda:LOCAL_RANK on GPUs)
            self.reference.to(self.engine.device)
        self._collective_device = collective_device(self.cfg, self.engine.device)  # for the learner's own all-reduces
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model_config = model.config
        self.step = 0
        self.nonfinite_losses = 0
        self._stage0_skipped = 0  # steps the stage-0 guard skipped (ZeRO counts its own)

    # -- scoring ----------------------------------------------------------------------------------------------
    def logprobs(self, items, responses, model=None, prompts=None, vision=None) -> torch.Tensor:
        """log-probs (B, R) of generated ids under ``model`` (default: the policy), without gradients."""
        batch = build_inputs(self.processor, self.model_config, items, responses, prompts)
        with torch.no_grad():  # small (B, R): kept beside the batch
            return response_logprobs(model or self.engine, batch, vision=vision).cpu()

    def _vision_store(self) -> SharedVisionFeatures | None:
        """One update's store of each prompt's vision features (``learner.share_vision_features``), or None when
        the tower trains: then every pass runs it, as its weights change between passes."""
        if not self.cfg.share_vision_features or not tower_frozen(base_model(self.engine.module)):
            return None
        return SharedVisionFeatures()

    def _micro_batches(
        self, indices: list[int], lengths: list[int] | None = None, at_least: int = 1
    ) -> list[list[int]]:
        """Rows in micro-batches (at least ``at_least`` of them): the bound on every forward and backward. By
        rows, contiguous, at most ``micro_batch_size`` each; with ``learner.micro_batch_tokens`` and the rows'
        sequence ``lengths``, by that budget of padded tokens over length-sorted rows. Every rank runs as many
        micro-batches as the rank that needs the most (under ZeRO-3 each forward gathers weights with all ranks)."""
        if self.cfg.micro_batch_tokens is None or lengths is None:
            by_rows = math.ceil(len(indices) / self.cfg.micro_batch_size)
            return split(indices, most_on_any_rank(self._collective_device, max(at_least, by_rows)))
        cut = token_budget(indices, lengths, self.cfg.micro_batch_tokens)
        parts = most_on_any_rank(self._collective_device, max(at_least, len(cut)))
        return cut if parts == len(cut) else token_budget(indices, lengths, self.cfg.micro_batch_tokens, parts)

    def _accumulate(self, loss: torch.Tensor, weight: float) -> None:
        """Backward of one micro-batch's loss, weighted by its share of the step (tokens or sequences), so that
        the accumulated gradient is the whole batch's whatever the cut."""
        if not torch.isfinite(loss.detach()):
            self.nonfinite_losses += 1
        self.engine.backward(loss * weight, scale_wrt_gas=False)

    def _optimizer_step(self) -> float:
        """The accumulation boundary: one optimizer step over the micro-batches accumulated since the last one.

        A non-finite loss or gradient must not move the weights. DeepSpeed's ZeRO optimizer (stages 1-3) checks
        the global gradient norm before stepping and skips the step (zeroing the gradients, counting
        ``skipped_steps``) when it is not finite; a non-finite loss makes the gradients non-finite, so it takes the
        same path. At stage 0 DeepSpeed steps the plain optimizer unchecked, so the check is here: every rank
        reports whether its gradients are finite and all take the same decision (an all-reduce on every rank,
        before DeepSpeed averages the gradients inside step()). The step still runs (it keeps DeepSpeed's counters
        and the LR schedule in step) with zero gradients at learning rate 0, which leaves every weight as it was
        (AdamW's decay is scaled by the learning rate too); only the moments decay once.

        Returns the global gradient norm before clipping: ZeRO's optimizer reports it; at stage 0 it is computed
        here from this rank's gradients (NaN when there are none).
        """
        norm = float("nan")
        if self.cfg.zero_stage == 0:
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            if grads:
                norm = float(torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads])))
            finite = torch.tensor(
                [float(all(bool(torch.isfinite(g).all()) for g in grads))], device=self._collective_device
            )
            import torch.distributed as dist

            if dist.is_initialized():
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                for g in grads:
                    g.zero_()
                for group in self.engine.optimizer.param_groups:
                    group["lr"] = 0.0  # the LR scheduler's step after this one sets the scheduled value again
                self._stage0_skipped += 1
        self.engine.step()
        reported = self.engine.get_global_grad_norm()
        return float(reported) if reported is not None else norm

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps not applied because the loss or the gradient was not finite."""
        return int(getattr(self.engine, "skipped_steps", 0)) + self._stage0_skipped

    # -- stage 1: SFT -------------------------------------------------------------------------------------------
    def sft_step(self, items, targets: list[list[int]]) -> float:
        """One optimizer step of next-token loss on the target ids (prompt tokens masked): the mean over every
        target token of the batch, accumulated over micro-batches of at most ``micro_batch_size`` rows."""
        total = max(1, sum(len(t) for t in targets))
        loss_sum = 0.0
        for chunk in self._micro_batches(list(range(len(items))), at_least=self.cfg.grad_accum):
            batch = build_inputs(
                self.processor, self.model_config, [items[i] for i in chunk], [targets[i] for i in chunk]
            )
            lp = response_logprobs(self.engine, batch)
            loss = -(lp.sum() / batch.response_mask.sum().clamp(min=1))
            weight = float(batch.response_mask.sum()) / total
            self._accumulate(loss, weight)
            loss_sum += float(loss.detach()) * weight
        self._optimizer_step()
        self.step += 1
        return loss_sum

    # -- stage 2: PA-GRPO / GRPO --------------------------------------------------------------------------------
    def rl_step(self, rollouts: list[Rollout], group_size: int, zero_perception: bool = False) -> dict:
        """One update on a rollout batch laid out group after group (G responses of a prompt side by side).

        ``zero_perception``: the step's perception rewards are not trustworthy (too many missing judge verdicts), so
        they are left out: PA-GRPO's A_P is zero, GRPO's advantage comes from R_R alone.
        """
        cfg = self.cfg
        tok = self.processor.tokenizer
        r_p = torch.tensor([r.r_perception for r in rollouts])
        r_r = torch.tensor([r.r_reasoning for r in rollouts])
        valid = torch.tensor([r.perception_valid for r in rollouts])
        if zero_perception:  # perception is out of this step: every rollout's (reasoning-only) reward counts
            r_p, valid = torch.zeros_like(r_p), torch.ones_like(valid)
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
        tokens = (m_p + m_r > 0).float()
        vision = self._vision_store()  # each prompt's frozen-tower features: computed once in this update, up front
        if vision is not None:
            vision.prepare(base_model(self.engine.module), prompts)
        # log-probs of the policy that sampled (before this update) and of the frozen reference
        t_logprobs = time.perf_counter()
        # each row's sequence length: what a token-budget micro-batch counts
        lengths = [int(p["input_ids"].shape[1]) + len(r) for p, r in zip(prompts, responses)]
        old_lp = torch.zeros(len(rollouts), R)
        ref_lp = torch.zeros(len(rollouts), R) if self.reference is not None or self._reference_is_base else None
        for chunk in self._micro_batches(list(range(len(rollouts))), lengths):  # by tokens: rows out of order
            its, resp, prm = [items[i] for i in chunk], [responses[i] for i in chunk], [prompts[i] for i in chunk]
            old_lp[chunk] = pad_to(self.logprobs(its, resp, prompts=prm, vision=vision), R)
            if ref_lp is not None:
                with adapters_off(self.engine.module) if self._reference_is_base else contextlib.nullcontext():
                    ref_lp[chunk] = pad_to(
                        self.logprobs(its, resp, model=self.reference, prompts=prm, vision=vision), R
                    )
        logprobs_s = time.perf_counter() - t_logprobs
        behaviour = _behaviour(rollouts, R)
        is_weight, mismatch = importance_weights(
            old_lp, behaviour, torch.tensor([r.stale for r in rollouts]), tokens, cfg.is_clamp
        )
        losses, stats_acc, grad_norms = [], [], []
        # every minibatch is checked before the first optimizer step: an uneven last one must not fail mid-update
        minibatches = split(list(range(len(rollouts))), cfg.minibatches, "learner.minibatches")
        if min(len(mb) for mb in minibatches) < cfg.grad_accum:
            raise ValueError(
                f"{len(rollouts)} rollouts in learner.minibatches={cfg.minibatches} give a minibatch of "
                f"{min(len(mb) for mb in minibatches)}, too few for learner.grad_accum={cfg.grad_accum} "
                "micro-batches: lower grad_accum or minibatches"
            )
        nonfinite_before, skipped_before = self.nonfinite_losses, self.skipped_steps
        cuts = [self._micro_batches(mb, lengths, cfg.grad_accum) for mb in minibatches]  # the same every epoch
        for _ in range(cfg.update_epochs):
            for mb, cut in zip(minibatches, cuts):  # one optimizer step each
                step_loss = 0.0
                for chunk in cut:  # each forward and backward: at most micro_batch_size rows or micro_batch_tokens
                    batch = build_inputs(
                        self.processor,
                        self.model_config,
                        [items[i] for i in chunk],
                        [responses[i] for i in chunk],
                        [prompts[i] for i in chunk],
                    )
                    lp = pad_to(response_logprobs(self.engine, batch, vision=vision), R)
                    idx = torch.tensor(chunk)

                    def here(t, idx=idx, device=lp.device):  # this micro-batch's rows of a batch tensor, on its device
                        return None if t is None else t[idx].to(device)

                    loss, st = policy_loss(
                        lp,
                        here(old_lp),
                        here(ref_lp),
                        here(adv),
                        here(tokens),
                        cfg.clip_eps,
                        cfg.beta,
                        cfg.aggregation,
                        is_weight=here(is_weight),
                    )
                    weight = token_share(tokens, chunk, mb, cfg.aggregation)
                    self._accumulate(loss, weight)
                    step_loss += float(loss.detach()) * weight
                    stats_acc.append(st)
                grad_norms.append(self._optimizer_step())
                losses.append(step_loss)
        self.step += 1
        finite = [x for x in losses if math.isfinite(x)]
        out = {
            "loss": float(np.mean(finite)) if finite else float("nan"),
            "unsplittable": unsplittable,
            **adv_stats,
            "nonfinite_losses": self.nonfinite_losses - nonfinite_before,
            "skipped_steps": self.skipped_steps - skipped_before,
            "lr": self.scheduler.get_last_lr()[0],
            "mismatch_kl": mismatch,
            "trained_tokens": int(tokens.sum()),
            "perception_tokens": float(m_p.sum()),
            "reasoning_tokens": float(m_r.sum()),
            # the sampled tokens' mean surprisal under the pre-update policy: a Monte Carlo estimate of its
            # entropy (no full-vocabulary pass needed)
            "entropy": float(-(old_lp.float().cpu() * tokens).sum() / tokens.sum().clamp(min=1)),
            "grad_norm": _finite_mean(grad_norms),
            "logprobs_s": logprobs_s,
            # of the update's forwards and backwards (rows x the longest row, summed): right padding
            "padding_fraction": padding_fraction([c for cut in cuts for c in cut], lengths),
        }
        if vision is not None:  # prompts whose vision features this update computed (once each)
            out["vision_tower_calls"] = vision.tower_calls
        for k in ("kl", "clip_fraction", "ratio_mean"):
            out[k] = _finite_mean([s[k] for s in stats_acc])
        return out

    def reset_reference(self) -> None:
        """The frozen KL reference becomes the current policy (call it after SFT: PA-GRPO's reference is the SFT
        model). With LoRA the reference is the model the learner started from (adapters off): a LoRA RL run starts
        from the SFT model's hf/ (the merged model), as ``train`` does."""
        if self._reference_is_base:
            raise ValueError(
                "with learner.lora the KL reference is the model the learner started from (its adapters "
                "off): start the RL learner from the SFT model's hf/ instead of resetting it"
            )
        if self.reference is not None:
            self.reference.load_state_dict(self.state_dict_for_rollout(), strict=False)


def sft_targets(tokenizer, items) -> list[list[int]]:
    """The SFT target ids of CoT rows: observation, think and answer in their tags, then the end-of-turn token."""
    from videoqa.prompts import sft_target

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return [tokenizer.encode(sft_target(it.sample), add_special_tokens=False) + [end] for it in items]


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _behaviour(rollouts: list[Rollout], width: int) -> torch.Tensor | None:
    """vLLM's log-probs (B, width), or None when a rollout lacks them."""
    if any(r.behaviour_logprobs is None for r in rollouts):
        return None
    out = torch.zeros(len(rollouts), width)
    for i, r in enumerate(rollouts):
        out[i, : len(r.behaviour_logprobs)] = torch.tensor(r.behaviour_logprobs, dtype=torch.float32)
    return out

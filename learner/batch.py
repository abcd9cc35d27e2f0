"""Turns (prompt with its decoded video or image, generated token ids) into model inputs for scoring.

The prompt goes through the model's own processor (the same pixels and the same prompt ids vLLM used); the
generated ids are appended as they are, never re-tokenised; M-RoPE positions are vLLM's (``learner.mrope``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.lora import base_model
from learner.mrope import model_positions
from learner.vision_features import PIXEL_KEYS, SharedVisionFeatures
from videoqa.loader import LoadedSample
from videoqa.prompts import chat_messages


@dataclass
class ScoredInputs:
    """A right-padded batch: model kwargs plus where each response sits."""

    model_kwargs: dict
    response_ids: torch.Tensor  # (B, R) padded with 0
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens
    prompt_lengths: list[int]
    prompts: list[dict] | None = None  # each row's processor output (its pixels), for SharedVisionFeatures


def prompt_inputs(processor, item: LoadedSample) -> dict:
    text = processor.apply_chat_template(chat_messages(item.sample), tokenize=False, add_generation_prompt=True)
    if item.video is not None:
        return processor(
            text=[text],
            videos=[item.video.frames],
            video_metadata=[item.video.metadata()],
            do_sample_frames=False,
            return_tensors="pt",
        )
    return processor(text=[text], images=[item.image], return_tensors="pt")


def build_inputs(
    processor, config, items: list[LoadedSample], responses: list[list[int]], prompts: list[dict] | None = None
) -> ScoredInputs:
    """``prompts`` (from ``prompt_inputs``) may be passed in when the same prompt is scored many times (a group)."""
    prompts = prompts or [prompt_inputs(processor, it) for it in items]
    pad = processor.tokenizer.pad_token_id or 0
    media = {config.image_token_id, config.video_token_id}
    seqs, positions, lengths = [], [], []
    for p, resp in zip(prompts, responses):
        prompt_ids = p["input_ids"][0].tolist()
        # A sampled <|video_pad|> / <|image_pad|> in a response is not a vision block: the model would try to put
        # video features there. It enters the model as padding (its log-prob is still that of the sampled id).
        ids = prompt_ids + [pad if t in media else t for t in resp]
        seqs.append(ids)
        positions.append(response_positions(model_positions(config, prompt_ids, p)[:, 0], len(resp)))
        lengths.append(len(prompt_ids))
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), pad, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(3, B, L, dtype=torch.long)
    for i, (s, ps) in enumerate(zip(seqs, positions)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        pos[:, i, : len(s)] = ps
    kw = {"input_ids": input_ids, "attention_mask": attention, "position_ids": pos}
    for key in ("pixel_values_videos", "pixel_values"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            kw[key] = torch.cat(parts)
    for key in ("video_grid_thw", "image_grid_thw"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            kw[key] = torch.cat(parts)
    R = max(1, max(len(r) for r in responses))
    rid = torch.zeros(B, R, dtype=torch.long)
    rmask = torch.zeros(B, R)
    for i, r in enumerate(responses):
        rid[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        rmask[i, : len(r)] = 1
    return ScoredInputs(kw, rid, rmask, lengths, list(prompts))


def response_positions(prompt_positions: torch.Tensor, n: int) -> torch.Tensor:
    """The prompt's M-RoPE positions (3, P) extended over ``n`` generated text tokens: every axis continues from
    the prompt's largest position + 1, as vLLM decodes."""
    start = int(prompt_positions.max()) + 1 if prompt_positions.numel() else 0
    tail = torch.arange(start, start + n, dtype=prompt_positions.dtype).view(1, -1).expand(3, -1)
    return torch.cat([prompt_positions, tail], dim=1)


LOGPROB_CHUNK = 128  # response positions per LM-head call: bounds the float32 logits to (B, 128, V)


def response_logprobs(
    model, batch: ScoredInputs, chunk: int = LOGPROB_CHUNK, vision: SharedVisionFeatures | None = None
) -> torch.Tensor:
    """log pi(token) of each generated token, (B, R); 0 where padded. Gradients flow when enabled.

    ``vision``: the update's store of each prompt's (frozen) vision features; the model then gets those instead of
    the pixels and does not run its tower.

    The (B, L, V) logits are never built: the decoder's last hidden states are gathered at the response positions,
    and the LM head runs on ``chunk`` of them at a time, its log-softmax in float32. With gradients each chunk is
    recomputed in the backward (checkpointed), so only one chunk's logits exist at any time (V is about 152K
    for Qwen2.5-VL: a 4 x 4096-token batch would otherwise hold 10 GB of float32 logits).
    """
    # a DeepSpeed engine or the model itself; under LoRA the transformers model inside peft's wrapper (its adapted
    # layers are in it: the forward goes through the adapters unless they are switched off)
    hf = base_model(getattr(model, "module", model))
    kwargs = {
        k: v.to(hf.device)
        for k, v in batch.model_kwargs.items()  # the inputs go where the model is
        if vision is None or k not in PIXEL_KEYS
    }
    if vision is not None:
        kwargs["mm_encoder_outputs"] = vision.encoder_outputs(hf, batch.prompts)
    hidden = hf.model(**kwargs, use_cache=False).last_hidden_state  # (B, L, H), after the final norm
    B, R = batch.response_ids.shape
    device = hidden.device
    # the logit at position t predicts token t+1: the response starts at P, predicted from P-1 (padded rows past
    # the sequence point at its last position; the mask zeroes them)
    starts = torch.tensor([P - 1 for P in batch.prompt_lengths], device=device)
    at = (starts[:, None] + torch.arange(R, device=device)[None, :]).clamp(max=hidden.shape[1] - 1)
    h = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, R, H)
    ids = batch.response_ids.to(device)
    head = hf.lm_head
    frozen_zero3 = _frozen_partitioned(head)

    def chunk_logprobs(h_chunk: torch.Tensor, ids_chunk: torch.Tensor) -> torch.Tensor:
        copy = frozen_zero3 is not None and torch.is_grad_enabled()  # no backward: the head's own gather serves
        logits = (frozen_zero3(h_chunk) if copy else head(h_chunk)).float()
        return torch.log_softmax(logits, -1).gather(-1, ids_chunk.unsqueeze(-1)).squeeze(-1)

    parts = []
    for s in range(0, R, chunk):
        h_c, ids_c = h[:, s : s + chunk], ids[:, s : s + chunk]
        if torch.is_grad_enabled() and h_c.requires_grad:
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(chunk_logprobs, h_c, ids_c, use_reentrant=False))
        else:
            parts.append(chunk_logprobs(h_c, ids_c))
    return torch.cat(parts, dim=1) * batch.response_mask.to(device)


def _frozen_partitioned(head):
    """For a frozen LM head under ZeRO-3 (``learner.freeze`` naming ``lm_head``, or tied embeddings frozen): the
    head as a function using a gathered copy of its weight; None otherwise. ZeRO-3 fetches a module's weights for
    its backward only when they are trainable, and the backward of F.linear reads the weight it saved, by then
    re-partitioned to an empty tensor (the checkpointed chunk fails its recompute check). A copy taken while
    gathered is what the chunk saves instead: one head's worth for as long as one chunk's backward."""
    frozen = [p for p in head.parameters() if hasattr(p, "ds_id") and not p.requires_grad]
    if not frozen:
        return None
    import deepspeed

    def apply(h: torch.Tensor) -> torch.Tensor:
        with deepspeed.zero.GatheredParameters(frozen):
            weight = head.weight.detach().clone()
            bias = None if head.bias is None else head.bias.detach().clone()
        return torch.nn.functional.linear(h, weight, bias)

    return apply

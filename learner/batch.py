"""Turns (prompt with its decoded video or image, generated token ids) into model inputs for scoring.

The prompt goes through the model's own processor (the same pixels and the same prompt ids vLLM used); the
generated ids are appended as they are, never re-tokenised; M-RoPE positions are vLLM's (``learner.mrope``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.mrope import model_positions
from videoqa.loader import LoadedSample
from videoqa.prompts import chat_messages


@dataclass
class ScoredInputs:
    """A right-padded batch: model kwargs plus where each response sits."""

    model_kwargs: dict
    response_ids: torch.Tensor  # (B, R) padded with 0
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens
    prompt_lengths: list[int]


def prompt_inputs(processor, item: LoadedSample) -> dict:
    text = processor.apply_chat_template(chat_messages(item.sample), tokenize=False, add_generation_prompt=True)
    if item.video is not None:
        return processor(text=[text], videos=[item.video.frames], video_metadata=[item.video.metadata()],
                         do_sample_frames=False, return_tensors="pt")
    return processor(text=[text], images=[item.image], return_tensors="pt")


def build_inputs(processor, config, items: list[LoadedSample], responses: list[list[int]],
                 prompts: list[dict] | None = None) -> ScoredInputs:
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
    return ScoredInputs(kw, rid, rmask, lengths)


def response_positions(prompt_positions: torch.Tensor, n: int) -> torch.Tensor:
    """The prompt's M-RoPE positions (3, P) extended over ``n`` generated text tokens: every axis continues from
    the prompt's largest position + 1, as vLLM decodes."""
    start = int(prompt_positions.max()) + 1 if prompt_positions.numel() else 0
    tail = torch.arange(start, start + n, dtype=prompt_positions.dtype).view(1, -1).expand(3, -1)
    return torch.cat([prompt_positions, tail], dim=1)


def response_logprobs(model, batch: ScoredInputs) -> torch.Tensor:
    """log pi(token) of each generated token, (B, R); 0 where padded. Gradients flow when enabled."""
    logits = model(**batch.model_kwargs).logits
    B, R = batch.response_ids.shape
    rows = []
    for i, P in enumerate(batch.prompt_lengths):
        # the logit at position t predicts token t+1: the response starts at P, predicted from P-1
        chunk = logits[i, P - 1 : P - 1 + R].float()
        if chunk.shape[0] < R:
            chunk = torch.cat([chunk, chunk.new_zeros(R - chunk.shape[0], chunk.shape[1])])
        lp = torch.log_softmax(chunk, -1).gather(-1, batch.response_ids[i].unsqueeze(-1)).squeeze(-1)
        rows.append(lp)
    return torch.stack(rows) * batch.response_mask

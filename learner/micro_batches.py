"""How an update's rows are cut: minibatches, micro-batches and each micro-batch's weight in its step (pure)."""

from __future__ import annotations

import torch


def chunks(xs: list, n: int) -> list[list]:
    n = max(1, n)
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def split(xs: list, parts: int, what: str = "learner.grad_accum") -> list[list]:
    """``xs`` in exactly ``parts`` near-equal contiguous pieces (each non-empty when len(xs) >= parts), so that
    DeepSpeed's accumulation boundary falls at the end of every optimizer step."""
    if len(xs) < parts:
        raise ValueError(f"{len(xs)} samples cannot fill {what}={parts} pieces")
    bounds = [round(i * len(xs) / parts) for i in range(parts + 1)]
    return [xs[bounds[i]:bounds[i + 1]] for i in range(parts)]


def token_share(tokens: torch.Tensor, chunk: list[int], batch: list[int], aggregation: str) -> float:
    """A micro-batch's weight in its optimizer step, so that the accumulated loss is the batch's own: its share of
    the batch's tokens (token_mean) or of its sequences (seq_mean_token_mean)."""
    if aggregation == "token_mean":
        return float(tokens[chunk].sum()) / max(1.0, float(tokens[batch].sum()))
    return len(chunk) / len(batch)


def pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[1] == width else torch.nn.functional.pad(t, (0, width - t.shape[1]))

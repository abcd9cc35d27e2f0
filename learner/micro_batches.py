"""How an update's rows are cut: minibatches, micro-batches and each micro-batch's weight in its step (pure)."""

from __future__ import annotations

import torch


def split(xs: list, parts: int, what: str = "learner.grad_accum") -> list[list]:
    """``xs`` in exactly ``parts`` near-equal contiguous pieces (each non-empty when len(xs) >= parts), so that
    DeepSpeed's accumulation boundary falls at the end of every optimizer step."""
    if len(xs) < parts:
        raise ValueError(f"{len(xs)} samples cannot fill {what}={parts} pieces")
    bounds = [round(i * len(xs) / parts) for i in range(parts + 1)]
    return [xs[bounds[i] : bounds[i + 1]] for i in range(parts)]


def token_budget(rows: list[int], lengths: list[int], budget: int, parts: int = 1) -> list[list[int]]:
    """``rows`` in micro-batches by a token budget: sorted longest first (rows of like length share a batch, so
    little of it is padding) and packed while the padded size, rows x the longest row, stays within ``budget``; a
    row longer than the budget goes alone. ``lengths[i]`` is row i's sequence length (prompt + response). At least
    ``parts`` micro-batches (needs len(rows) >= parts): the ones with the largest padded size are halved until
    there are that many, which is how every learner rank runs the same number of forwards."""
    if len(rows) < parts:
        raise ValueError(f"{len(rows)} rows cannot fill {parts} micro-batches")
    out: list[list[int]] = []
    for i in sorted(rows, key=lambda r: (-lengths[r], r)):
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)  # the batch's first row is its longest
        else:
            out.append([i])
    while len(out) < parts:
        big = max((b for b in out if len(b) > 1), key=lambda b: len(b) * lengths[b[0]])
        k = out.index(big)
        out[k : k + 1] = [big[: len(big) // 2], big[len(big) // 2 :]]
    return out


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """The share of the micro-batches' padded tokens (rows x the longest row, summed) that is padding."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / max(1, padded)


def token_share(tokens: torch.Tensor, chunk: list[int], batch: list[int], aggregation: str) -> float:
    """A micro-batch's weight in its optimizer step, so that the accumulated loss is the batch's own: its share of
    the batch's tokens (token_mean) or of its sequences (seq_mean_token_mean)."""
    if aggregation == "token_mean":
        return float(tokens[chunk].sum()) / max(1.0, float(tokens[batch].sum()))
    return len(chunk) / len(batch)


def pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[1] == width else torch.nn.functional.pad(t, (0, width - t.shape[1]))

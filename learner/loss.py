"""The PA-GRPO objective (VideoP2R Eqs. 6-7) per token, and its GRPO special case.

For each generated token t of rollout i: ratio = pi(o_t) / pi_old(o_t); advantage A = A_{i,P} on perception
tokens, A_{i,R} on reasoning tokens (``learner.masks`` gives the weights); the clipped surrogate
min(ratio * A, clip(ratio, 1-eps, 1+eps) * A), minus beta times the k3 estimate of KL(pi || pi_ref)
(Video-R1: beta 0.04): exp(ref - logp) - (ref - logp) - 1. The loss is the negative, aggregated over tokens.
"""

from __future__ import annotations

import torch


def token_advantages(a_p: torch.Tensor, a_r: torch.Tensor, m_p: torch.Tensor, m_r: torch.Tensor) -> torch.Tensor:
    """Per-token advantage (B, T): A_P on perception tokens, A_R on reasoning tokens."""
    return a_p[:, None] * m_p + a_r[:, None] * m_r


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    aggregation: str = "token_mean",
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Loss and stats. All tensors (B, T); ``mask`` is 1 on generated tokens, 0 on padding. ``is_weight``: per-token
    truncated importance weights pi_old / mu for rollouts sampled by an older policy mu (overlapped mode)."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    if is_weight is not None:
        surrogate = surrogate * is_weight.detach()
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    if aggregation == "token_mean":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif aggregation == "seq_mean_token_mean":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        raise ValueError(f"unknown loss aggregation {aggregation!r} (token_mean or seq_mean_token_mean)")
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        # tokens where the clipped branch is the one min() takes (its gradient is zero): r above 1 + eps with A > 0,
        # or below 1 - eps with A < 0; a ratio outside the range on the other side still gets its gradient
        clipped = ((ratio > 1 + clip_eps) & (advantages > 0)) | ((ratio < 1 - clip_eps) & (advantages < 0))
        clipped = clipped.to(mask.dtype)
        stats = {
            "kl": float((kl * mask).sum() / n),
            "clip_fraction": float((clipped * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
        }
    return loss, stats


def importance_weights(
    old_lp: torch.Tensor, behaviour: torch.Tensor | None, stale: torch.Tensor, tokens: torch.Tensor, clamp: float
) -> tuple[torch.Tensor | None, float]:
    """(per-token truncated importance weights, mismatch KL).

    A stale rollout was sampled by older weights (the behaviour policy mu) than the ones the update starts from
    (pi_old): its tokens are weighted by min(pi_old / mu, clamp) (truncated IS, as in decoupled PPO / AReaL); fresh
    rollouts get 1. The mismatch KL, k3 estimate of KL(mu || pi_old) over every token, is ~0 when the rollout
    workers hold exactly the learner's weights, so it also catches weight-sync bugs.
    """
    if behaviour is None:
        return None, float("nan")
    log_ratio = (old_lp - behaviour) * tokens
    d = log_ratio.double()  # float32 rounds the k3 of a 1e-6 difference to exactly 0
    mismatch = float(((torch.exp(d) - 1 - d) * tokens).sum() / tokens.sum().clamp(min=1))
    if not bool(stale.any()):
        return None, mismatch
    weight = torch.clamp(torch.exp(log_ratio), max=clamp)
    return torch.where(stale[:, None], weight, torch.ones_like(weight)), mismatch

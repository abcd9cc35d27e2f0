"""Group-relative advantages (VideoP2R Eq. 5; GRPO): A_i = (R_i - mean_j R_j) / std_j R_j within each group of G
rollouts of one prompt. PA-GRPO normalises the perception reward R_P and the reasoning reward R_R each in its own
group (their scales differ); GRPO normalises R_P + R_R once."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None, eps: float = 1e-6
) -> tuple[torch.Tensor, int]:
    """Advantages of a 1-D tensor of rewards laid out group after group, and how many groups carried no signal.

    A group whose (valid) rewards are all equal gets zeros. ``valid`` (bool, same shape) leaves samples out of
    their group's mean and std (e.g. a missing judge verdict under ``reward.missing_verdict=exclude``); they get 0.
    The standard deviation is the population one (divide by the number of valid members).
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got {tuple(rewards.shape)}"
        )
    r = rewards.view(-1, group_size)
    m = torch.ones_like(r, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool).view_as(r)
    n = m.sum(1, keepdim=True).clamp(min=1)
    mean = (r * m).sum(1, keepdim=True) / n
    var = (((r - mean) ** 2) * m).sum(1, keepdim=True) / n
    std = var.sqrt()
    flat = std < eps  # all equal (or fewer than two valid members): no signal
    adv = torch.where(flat | ~m, torch.zeros_like(r), (r - mean) / (std + eps))
    return adv.view(-1), int(flat.sum())


def process_advantages(
    r_perception: torch.Tensor,
    r_reasoning: torch.Tensor,
    group_size: int,
    mode: str = "pa_grpo",
    perception_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(A_P, A_R, stats). ``pa_grpo``: each process in its own group. ``grpo``: one advantage of R_P + R_R, the same
    for both processes (the paper's process-agnostic baseline)."""
    if mode == "pa_grpo":
        a_p, flat_p = group_advantages(r_perception, group_size, perception_valid)
        a_r, flat_r = group_advantages(r_reasoning, group_size)
        return a_p, a_r, {"flat_groups_perception": flat_p, "flat_groups_reasoning": flat_r}
    if mode == "grpo":
        # a rollout whose R_P is unknown (missing verdict, reward.missing_verdict=exclude) has no known total: it
        # is left out of its group, as PA-GRPO leaves it out of the perception group
        total = torch.as_tensor(r_perception) + torch.as_tensor(r_reasoning)
        a, flat = group_advantages(total, group_size, perception_valid)
        return a, a.clone(), {"flat_groups": flat}
    raise ValueError(f"unknown advantage mode {mode!r} (pa_grpo or grpo)")

"""The learner: advantages, per-process token masks, the PA-GRPO / GRPO loss, log-probs, and the DeepSpeed engine."""

from learner.advantages import group_advantages, process_advantages
from learner.loss import policy_loss, token_advantages

__all__ = ["group_advantages", "policy_loss", "process_advantages", "token_advantages"]

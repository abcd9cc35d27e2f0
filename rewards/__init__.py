"""Pure reward functions of VideoP2R (no Ray, torch or vLLM): parsing, accuracy by problem type, the judge's
prompt and verdict, the per-process rewards R_P and R_R, and benchmark scoring (Video-R1's rules)."""

from rewards.accuracy import PROBLEM_TYPES, accuracy_reward, strip_answer_tags
from rewards.combine import LengthRule, ProcessRewards, length_reward, needs_judge, process_rewards
from rewards.eval_score import eval_score, mean_relative_accuracy, predicted_answer, think_answer_mismatch
from rewards.judge import PROMPT_VERSION, judge_prompt, parse_judgement, verdict_key
from rewards.parsing import ParsedResponse, parse_response

__all__ = [
    "PROBLEM_TYPES", "PROMPT_VERSION", "LengthRule", "ParsedResponse", "ProcessRewards", "accuracy_reward",
    "eval_score", "judge_prompt", "length_reward", "mean_relative_accuracy", "needs_judge", "parse_judgement",
    "parse_response", "predicted_answer", "process_rewards", "strip_answer_tags", "think_answer_mismatch",
    "verdict_key",
]  # fmt: skip

"""Per-process rewards (VideoP2R Eqs. 3-7): R_k = R_acc,k + R_form,k + R_len,k for k in {P (perception), R (reasoning)}.

- R_acc,P: the judge's verdict (1 Yes, 0 No). A response without a well-formed observation is not judged: 0.
  No verdict (judge failed or unparseable) is 0 when ``missing_verdict="as_no"``; with ``"exclude"`` the sample is
  marked ``perception_valid=False`` and the advantage computation leaves it out of the perception group.
- R_acc,R: ``accuracy_reward`` on the answer.
- R_form,k in {0, 1}: the process's text is in its tags (``parse_response``).
- R_len,k = ``length_bonus`` (paper: 0.2) only where R_acc,k and R_form,k are non-zero and the process's token count
  lies in its range (paper: perception [128, 320], reasoning [320, 512]).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rewards.accuracy import accuracy_reward
from rewards.parsing import ParsedResponse


@dataclass(frozen=True)
class LengthRule:
    perception: tuple[int, int] = (128, 320)
    reasoning: tuple[int, int] = (320, 512)
    bonus: float = 0.2


@dataclass(frozen=True)
class ProcessRewards:
    acc_p: float
    form_p: float
    len_p: float
    acc_r: float
    form_r: float
    len_r: float
    verdict: bool | None  # the judge's answer; None if not judged successfully
    perception_valid: bool  # False: leave this sample out of the perception group's normalisation

    @property
    def perception(self) -> float:  # R_P
        return self.acc_p + self.form_p + self.len_p

    @property
    def reasoning(self) -> float:  # R_R
        return self.acc_r + self.form_r + self.len_r

    @property
    def total(self) -> float:  # the process-agnostic reward of the GRPO baseline
        return self.perception + self.reasoning

    def as_dict(self) -> dict:
        return {**asdict(self), "perception": self.perception, "reasoning": self.reasoning}


def length_reward(tokens: int, accuracy: float, form: float, window: tuple[int, int], bonus: float) -> float:
    return bonus if accuracy > 0 and form > 0 and window[0] <= tokens <= window[1] else 0.0


def needs_judge(parsed: ParsedResponse) -> bool:
    """Only a well-formed observation is sent to the judge; anything else has no perception to judge."""
    return parsed.perception_format


def process_rewards(
    parsed: ParsedResponse,
    solution: str,
    problem_type: str,
    verdict: bool | None,
    perception_tokens: int,
    reasoning_tokens: int,
    rule: LengthRule = LengthRule(),
    missing_verdict: str = "as_no",
) -> ProcessRewards:
    if missing_verdict not in ("as_no", "exclude"):
        raise ValueError(f"missing_verdict must be 'as_no' or 'exclude', got {missing_verdict!r}")
    form_p = 1.0 if parsed.perception_format else 0.0
    form_r = 1.0 if parsed.reasoning_format else 0.0
    valid = True
    if not needs_judge(parsed):
        verdict, acc_p = None, 0.0
    elif verdict is None:
        acc_p = 0.0
        valid = missing_verdict == "as_no"
    else:
        acc_p = 1.0 if verdict else 0.0
    acc_r = accuracy_reward(parsed.answer, solution, problem_type)
    return ProcessRewards(
        acc_p=acc_p,
        form_p=form_p,
        len_p=length_reward(perception_tokens, acc_p, form_p, rule.perception, rule.bonus),
        acc_r=acc_r,
        form_r=form_r,
        len_r=length_reward(reasoning_tokens, acc_r, form_r, rule.reasoning, rule.bonus),
        verdict=verdict,
        perception_valid=valid,
    )

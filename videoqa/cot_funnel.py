"""The VideoP2R CoT funnel's decisions (paper, Sec. 3.1: how VideoP2R-CoT-162K was built), as pure functions.

1. Process-aware CoT generation: the teacher answers with the observation / think / answer template; an output
   that breaks the template is dropped ("template").
2. Answer verification: the answer is scored with the task's accuracy reward; under ``min_accuracy`` (paper: 0.6)
   it is dropped ("accuracy").
3. Observation sufficiency: the judge sees only the observation, the question and the correct answer; only "Yes"
   is kept ("judge_no"). A judge that gave no verdict (failed, timed out, unparseable) decides nothing: the row is
   "judge_missing" and a rerun asks again.

With several samples per question, the kept one is the most accurate candidate that passes all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from rewards import accuracy_reward, parse_response
from videoqa.schema import Sample

STEPS = ("template", "accuracy", "judge")
FINAL_REASONS = ("kept", "template", "accuracy", "judge_no")  # decided; "judge_missing" is retried


@dataclass(frozen=True)
class Candidate:
    text: str
    format_ok: bool
    accuracy: float
    observation: str | None
    think: str | None
    answer: str | None


def screen(sample: Sample, text: str) -> Candidate:
    """Steps 1 and 2 for one teacher output."""
    p = parse_response(text)
    ok = p.perception_format and p.reasoning_format
    acc = accuracy_reward(p.answer, sample.solution, sample.problem_type) if ok else 0.0
    return Candidate(text, ok, acc, p.observation, p.think, p.answer)


def needs_judging(c: Candidate, min_accuracy: float) -> bool:
    return c.format_ok and c.accuracy >= min_accuracy


@dataclass(frozen=True)
class Decision:
    reason: str  # "kept", "template", "accuracy", "judge_no" or "judge_missing"
    index: int | None  # the candidate kept (or the best one that got furthest)
    passed: tuple[bool, bool, bool]  # whether any candidate passed steps 1, 1-2 and 1-3

    @property
    def final(self) -> bool:
        return self.reason in FINAL_REASONS


def decide(candidates: list[Candidate], verdicts: list[bool | None], min_accuracy: float) -> Decision:
    """``verdicts[i]`` is the judge's answer for candidate i (None: not judged or no verdict)."""
    if not candidates:
        raise ValueError("decide() needs at least one candidate")
    formatted = [i for i, c in enumerate(candidates) if c.format_ok]
    accurate = [i for i in formatted if needs_judging(candidates[i], min_accuracy)]
    yes = [i for i in accurate if verdicts[i] is True]
    best = lambda idx: max(idx, key=lambda i: (candidates[i].accuracy, -i))  # noqa: E731 - ties: the first
    passed = (bool(formatted), bool(accurate), bool(yes))
    if yes:
        return Decision("kept", best(yes), passed)
    if not formatted:
        return Decision("template", 0, passed)
    if not accurate:
        return Decision("accuracy", best(formatted), passed)
    unanswered = [i for i in accurate if verdicts[i] is None]
    if unanswered:
        return Decision("judge_missing", best(unanswered), passed)
    return Decision("judge_no", best(accurate), passed)


def funnel_table(rows_in: int, decisions: list[Decision], skipped: dict[str, int]) -> list[tuple[str, int]]:
    """The funnel: rows in, rows that reached each step and passed it, and the drops by reason."""
    table = [("rows in", rows_in)]
    for k, step in enumerate(STEPS):
        table.append((f"passed {step}", sum(d.passed[k] for d in decisions)))
    table.append(("kept", sum(d.reason == "kept" for d in decisions)))
    for reason in ("template", "accuracy", "judge_no", "judge_missing"):
        table.append((f"dropped: {reason}", sum(d.reason == reason for d in decisions)))
    for reason, n in sorted(skipped.items()):
        table.append((f"skipped: {reason}", n))
    return table

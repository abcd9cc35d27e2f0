"""Reasoning accuracy R_acc,R by problem type (VideoP2R Eq. 4; Video-R1's definitions).

- multiple choice: 1 if the answer is exactly the option (after stripping whitespace)
- numerical: 1 if equal after rounding to 2 decimals; 0 if only one side has a decimal point
- OCR: clip(1 - WER, 0, 1) (word error rate, jiwer)
- free-form: mean F-measure of ROUGE-1, ROUGE-2 and ROUGE-L (rouge-score)
- regression: 1 - min(1, |p - g| / |g|)
"""

from __future__ import annotations

import re
from functools import lru_cache

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
_ANSWER_TAGS = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def strip_answer_tags(solution: str) -> str:
    m = _ANSWER_TAGS.search(solution)
    return (m.group(1) if m else solution).strip()


def to_number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def _has_decimal(text: str) -> bool:
    return "." in text or "," in text


def numerical_accuracy(answer: str, truth: str) -> float:
    if _has_decimal(answer) != _has_decimal(truth):
        return 0.0
    a, t = to_number(answer), to_number(truth)
    if a is None or t is None:
        return 0.0
    return 1.0 if round(a, 2) == round(t, 2) else 0.0


def regression_accuracy(answer: str, truth: str) -> float:
    a, t = to_number(answer), to_number(truth)
    if a is None or t is None:
        return 0.0
    if t == 0:  # the relative error is undefined: only an exact 0 is right
        return 1.0 if a == 0 else 0.0
    return 1.0 - min(1.0, abs(a - t) / abs(t))


def ocr_accuracy(answer: str, truth: str) -> float:
    import jiwer

    if not truth.strip():
        return 1.0 if not answer.strip() else 0.0
    if not answer.strip():
        return 0.0
    return min(1.0, max(0.0, 1.0 - jiwer.wer(truth, answer)))


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def free_form_accuracy(answer: str, truth: str) -> float:
    if not answer.strip() or not truth.strip():
        return 0.0
    scores = _rouge().score(truth, answer)
    return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3


def accuracy_reward(answer: str | None, solution: str, problem_type: str) -> float:
    """R_acc,R in [0, 1]. ``solution`` may carry ``<answer>`` tags; a missing answer (``None``) scores 0."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem_type {problem_type!r}; expected one of: {', '.join(PROBLEM_TYPES)}")
    if answer is None:
        return 0.0
    answer, truth = answer.strip(), strip_answer_tags(solution)
    if problem_type == "multiple choice":
        return 1.0 if answer == truth else 0.0
    if problem_type == "numerical":
        return numerical_accuracy(answer, truth)
    if problem_type == "regression":
        return regression_accuracy(answer, truth)
    if problem_type == "OCR":
        return ocr_accuracy(answer, truth)
    return free_form_accuracy(answer, truth)

"""Benchmark scoring exactly as Video-R1's evaluation script (``src/eval_bench.py``), and the think-answer mismatch
check the VideoP2R paper reports. Pure: no Ray, torch or vLLM.

``eval_score(model_output, solution, problem_type)``:
- the prediction is the text inside the first ``<answer>`` pair, or the whole output when there is none (or it is
  empty); the truth is the solution's ``<answer>`` text (the whole solution when it has no tags)
- multiple choice: 1 if equal after stripping whitespace
- numerical: 0 if exactly one side has a decimal point or comma, else 1 if equal after removing commas and rounding
  to 2 decimals
- regression: mean relative accuracy (MRA), the fraction of thresholds 0.50, 0.55, ..., 0.95 for which
  ``|pred - gt| / (|gt| + 1e-8) < 1 - threshold``, computed in float32 as the script's torch code does
- OCR and free-form: the training accuracy functions (word error rate; mean ROUGE F-measure)
"""

from __future__ import annotations

import re

import numpy as np

from rewards.accuracy import (
    PROBLEM_TYPES,
    free_form_accuracy,
    numerical_accuracy,
    ocr_accuracy,
    strip_answer_tags,
    to_number,
)

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_THINK = re.compile(r"<think>\s*(.*?)\s*</think>", re.DOTALL)
# torch.arange(0.5, 0.975, 0.05, dtype=float32) in Video-R1: each value start + i * step, rounded to float32
MRA_THRESHOLDS = (0.5 + np.arange(10) * 0.05).astype(np.float32)


def predicted_answer(model_output: str) -> str:
    """The answer text Video-R1 scores: inside the first ``<answer>`` tags, else the whole output."""
    m = _ANSWER.search(model_output)
    answer = m.group(1).strip() if m else ""
    return answer if answer else model_output


def mean_relative_accuracy(pred: float, truth: float) -> float:
    """MRA of one prediction (VSI-Bench's metric). A truth of 0 is only matched by an exact 0 (the 1e-8 keeps the
    relative error finite); NaN or infinite predictions score 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        p, t = np.float32(pred), np.float32(truth)
        rel = np.abs(p - t) / (np.abs(t) + np.float32(1e-8))
        hits = rel < (np.float32(1) - MRA_THRESHOLDS)
    return float(hits.sum()) / len(MRA_THRESHOLDS)


def eval_score(model_output: str, solution: str, problem_type: str) -> float:
    """One benchmark row's score in [0, 1] (see the module docstring for the rule per problem type)."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem_type {problem_type!r}; expected one of: {', '.join(PROBLEM_TYPES)}")
    pred, truth = predicted_answer(model_output), strip_answer_tags(solution)
    if problem_type == "multiple choice":
        return 1.0 if pred.strip() == truth.strip() else 0.0
    if problem_type == "numerical":
        return numerical_accuracy(pred, truth)
    if problem_type == "regression":
        p, t = to_number(pred), to_number(truth)
        return 0.0 if p is None or t is None else mean_relative_accuracy(p, t)
    if problem_type == "OCR":
        return ocr_accuracy(pred, truth)
    return free_form_accuracy(pred, truth)


# The think's conclusion: the last option letter it names ("the answer is B", "option (C)", "choice: D") or, for
# numeric answers, the last number it writes.
_CONCLUDED_OPTION = re.compile(r"(?i:answer|option|choice)\s*(?:is|would be|should be|:)?\s*\(?([A-Z])\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def think_answer_mismatch(model_output: str, problem_type: str) -> bool | None:
    """Whether the answer contradicts the conclusion the think reached; ``None`` when it cannot be told (no think or
    answer tags, no conclusion found, or a free-text type).

    Multiple choice: the last option letter the think names after "answer", "option" or "choice" differs from the
    answer's letter. Numerical and regression: the think's last number differs from the answer (rounded to 2
    decimals). A rate over the rows where it can be told is what the paper reports as the mismatch rate."""
    think, answer = _THINK.search(model_output), _ANSWER.search(model_output)
    if not think or not answer or not answer.group(1).strip():
        return None
    think_text, answer_text = think.group(1), answer.group(1).strip()
    if problem_type == "multiple choice":
        named = _CONCLUDED_OPTION.findall(think_text)
        letter = re.match(r"\(?([A-Z])\b", answer_text)
        if not named or not letter:
            return None
        return named[-1] != letter.group(1)
    if problem_type in ("numerical", "regression"):
        numbers = _NUMBER.findall(think_text)
        a = to_number(answer_text)
        if not numbers or a is None:
            return None
        t = to_number(numbers[-1])
        return t is None or round(t, 2) != round(a, 2)
    return None

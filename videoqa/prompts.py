"""Prompts in the VideoP2R format: observe first, then think, then answer.

The model is asked for ``<observation>..</observation><think>..</think><answer>..</answer>``; the per-type answer
instructions follow Video-R1's, so that the accuracy rewards can parse what the model writes.
"""

from __future__ import annotations

from videoqa.schema import Sample

INSTRUCTION = (
    "{question}\n"
    "First describe what you observe in the {media} that is needed to answer the question, inside "
    "<observation> </observation> tags, beginning with \"Based on the question, I need to notice\". "
    "Then reason step by step from those observations inside <think> </think> tags, beginning with "
    "\"Based on the observations,\". Finally give your answer inside <answer> </answer> tags."
)

ANSWER_FORMAT = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the {media} clearly and provide your text answer within the <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}


def question_text(sample: Sample) -> str:
    """The question with its options appended (multiple choice)."""
    q = sample.problem.strip()
    if sample.problem_type == "multiple choice" and sample.options:
        q += "\nOptions:\n" + "\n".join(sample.options)
    return q


def user_text(sample: Sample) -> str:
    media = sample.data_type
    return INSTRUCTION.format(question=question_text(sample), media=media) + ANSWER_FORMAT[sample.problem_type].format(
        media=media
    )


def chat_messages(sample: Sample) -> list[dict]:
    """One user turn: the video (or image) placeholder first, then the instruction (Qwen2.5-VL's layout)."""
    return [{"role": "user", "content": [{"type": sample.data_type}, {"type": "text", "text": user_text(sample)}]}]


def sft_target(sample: Sample) -> str:
    """The process-aware CoT target of a CoT row (observation + think + answer)."""
    if not sample.observation or not sample.process:
        raise ValueError(f"row {sample.problem_id}: an SFT row needs 'observation' and 'process' text")
    return (
        f"<observation>{sample.observation.strip()}</observation>"
        f"<think>{sample.process.strip()}</think>"
        f"<answer>{sample.answer}</answer>"
    )

"""Prompts in the VideoP2R format: observe first, then think, then answer.

The model is asked for ``<observation>..</observation><think>..</think><answer>..</answer>``; the per-type answer
instructions follow Video-R1's, so that the accuracy rewards can parse what the model writes. The ``video-r1``
style is Video-R1's evaluation prompt (think, then answer), so benchmark numbers compare with theirs.
"""

from __future__ import annotations

from videoqa.schema import Sample

INSTRUCTION = (
    "{question}\n"
    "First describe what you observe in the {media} that is needed to answer the question, inside "
    '<observation> </observation> tags, beginning with "Based on the question, I need to notice". '
    "Then reason step by step from those observations inside <think> </think> tags, beginning with "
    '"Based on the observations,". Finally give your answer inside <answer> </answer> tags.'
)

VIDEO_R1_INSTRUCTION = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer between "
    "the <answer> and </answer> tags."
)
PROMPT_STYLES = ("process", "video-r1")

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


def user_text(sample: Sample, style: str = "process") -> str:
    media = sample.data_type
    if style == "video-r1":  # their question layout ("Options:" right after the problem) and "image/video"
        q = sample.problem
        if sample.problem_type == "multiple choice":
            q += "Options:\n" + "".join(o + "\n" for o in sample.options)
        return VIDEO_R1_INSTRUCTION.format(question=q) + ANSWER_FORMAT[sample.problem_type].format(media="image/video")
    if style != "process":
        raise ValueError(f"unknown prompt style {style!r}; expected one of: {', '.join(PROMPT_STYLES)}")
    return INSTRUCTION.format(question=question_text(sample), media=media) + ANSWER_FORMAT[sample.problem_type].format(
        media=media
    )


def chat_messages(sample: Sample, style: str = "process") -> list[dict]:
    """One user turn: the video (or image) placeholder first, then the instruction (Qwen2.5-VL's layout)."""
    return [
        {"role": "user", "content": [{"type": sample.data_type}, {"type": "text", "text": user_text(sample, style)}]}
    ]


def sft_target(sample: Sample) -> str:
    """The process-aware CoT target of a CoT row (observation + think + answer)."""
    if not sample.observation or not sample.process:
        raise ValueError(f"row {sample.problem_id}: an SFT row needs 'observation' and 'process' text")
    return (
        f"<observation>{sample.observation.strip()}</observation>"
        f"<think>{sample.process.strip()}</think>"
        f"<answer>{sample.answer}</answer>"
    )

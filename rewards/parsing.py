"""Splitting a response into its processes: ``<observation>`` (perception), ``<think>`` and ``<answer>`` (reasoning).

A segment is the text inside exactly one well-formed pair of its tags that contains no other process tag.
Anything else (absent, unclosed, repeated, nested, closed before opened) makes that segment ``None``, so a
malformed response can never be read as a well-formed one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS = ("observation", "think", "answer")
_ANY_TAG = re.compile(r"</?(?:observation|think|answer)>")


@dataclass(frozen=True)
class ParsedResponse:
    observation: str | None
    think: str | None
    answer: str | None
    perception_format: bool  # R_form,P: the response opens with one well-formed, non-empty observation
    reasoning_format: bool  # R_form,R: one think then one answer, non-empty, after the observation, nothing after


def _segment(text: str, tag: str) -> tuple[str | None, int, int]:
    """(content, start of the opening tag, end of the closing tag); content None if not exactly one clean pair."""
    opens = [m.start() for m in re.finditer(f"<{tag}>", text)]
    closes = [m.start() for m in re.finditer(f"</{tag}>", text)]
    if len(opens) != 1 or len(closes) != 1 or closes[0] < opens[0]:
        return None, -1, -1
    content = text[opens[0] + len(tag) + 2 : closes[0]]
    if _ANY_TAG.search(content):  # nested tags: the boundaries are ambiguous
        return None, -1, -1
    return content.strip(), opens[0], closes[0] + len(tag) + 3


def _inside_another(text: str, tag: str, start: int) -> bool:
    """Whether the tag opening at ``start`` sits inside another process's open/close pair."""
    for other in TAGS:
        if other == tag:
            continue
        o, c = text.find(f"<{other}>"), text.find(f"</{other}>")
        if c < 0:
            c = len(text)  # an unclosed tag runs to the end of the text
        if 0 <= o < start < c:
            return True
    return False


def parse_response(text: str) -> ParsedResponse:
    segs = {}
    for tag in TAGS:
        content, start, end = _segment(text, tag)
        if content is not None and _inside_another(text, tag, start):
            content, start, end = None, -1, -1
        segs[tag] = (content, start, end)
    (obs, o_start, o_end), (think, t_start, t_end), (answer, a_start, a_end) = (segs[t] for t in TAGS)
    perception_format = bool(obs) and text[:o_start].strip() == ""
    reasoning_format = (
        bool(think)
        and bool(answer)
        and t_end <= a_start
        and text[t_end:a_start].strip() == ""
        and text[a_end:].strip() == ""
        and (o_end == -1 or (o_end <= t_start and text[o_end:t_start].strip() == ""))
    )
    return ParsedResponse(obs, think, answer, perception_format, reasoning_format)

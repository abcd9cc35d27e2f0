"""Which generated tokens belong to which process, from the generated ids (never from re-tokenised text).

Perception owns the ``<observation> ... </observation>`` span, both tags included; reasoning owns every other
generated token (``<think>``, ``<answer>``, their tags, anything after, and the end-of-turn token). A token that
straddles the boundary belongs to perception. A response with no well-formed observation cannot be split: each of
its tokens counts half for each process, so it gets the mean of A_P and A_R (and since its R_P is the group's
minimum, it is still penalised); with R_P = R_R this equals GRPO's advantage.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from rewards import parse_response

OPEN, CLOSE = b"<observation>", b"</observation>"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 / Qwen byte-level BPE: the printable character each byte is written as, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer, token_ids: list[int]) -> list[bytes]:
    """The bytes each token contributes to the decoded text (special tokens: their literal text)."""
    dec = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    out = []
    for tid, piece in zip(token_ids, tokenizer.convert_ids_to_tokens(token_ids)):
        if piece is None:
            out.append(b"")
        elif tid in special or any(ch not in dec for ch in piece):
            out.append(piece.encode())
        else:
            out.append(bytes(dec[ch] for ch in piece))
    return out


def process_masks(tokenizer, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(perception weights, reasoning weights, splittable) over ``token_ids``; weights are 0, 0.5 or 1."""
    pieces = token_bytes(tokenizer, token_ids)
    text = b"".join(pieces)
    n = len(token_ids)
    parsed = parse_response(text.decode("utf-8", errors="replace"))
    start = text.find(OPEN)
    end = text.find(CLOSE, start + len(OPEN)) if start >= 0 else -1
    if parsed.observation is None or start < 0 or end < 0:
        half = torch.full((n,), 0.5)
        return half, half.clone(), False
    end += len(CLOSE)
    perception = torch.zeros(n)
    pos = 0
    for i, p in enumerate(pieces):
        lo, hi = pos, pos + len(p)
        if hi > start and lo < end:  # overlaps the observation span
            perception[i] = 1.0
        pos = hi
    return perception, 1.0 - perception, True

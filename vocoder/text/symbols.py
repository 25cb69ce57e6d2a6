"""The text front-end's symbol set and the mapping between normalized text and ids.

Ids, in order: 0 is the pad symbol "_" (never valid inside text), 1 is the space, 2-12
are the punctuation marks ``! ' " ( ) , - . : ; ?`` and 13-38 are the letters a-z.
Text must be normalized first (`normalize_text`), which lower-cases it and spells out
digits and symbols; anything else is rejected with `TextError`.
"""
from __future__ import annotations

from collections.abc import Iterable

from vocoder.errors import VocoderError

PAD = "_"
SPACE = " "
PUNCTUATION = "!'\"(),-.:;?"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS = PAD + SPACE + PUNCTUATION + LETTERS
PAD_ID = 0

_SYMBOL_TO_ID = {symbol: i for i, symbol in enumerate(SYMBOLS)}


class TextError(VocoderError):
    """Text cannot be synthesized: empty, too long, or holding unsupported characters."""


def _describe(chars: Iterable[str]) -> str:
    return ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars)


def text_to_ids(text: str) -> list[int]:
    """Ids of the characters of normalized `text`; raises `TextError` naming every
    unsupported character (the pad symbol included)."""
    unsupported = dict.fromkeys(ch for ch in text if ch == PAD or ch not in _SYMBOL_TO_ID)
    if unsupported:
        raise TextError(
            f"unsupported characters after normalization: {_describe(unsupported)}; "
            f"only lower-case a-z, space and {PUNCTUATION} are allowed")
    return [_SYMBOL_TO_ID[ch] for ch in text]


def ids_to_text(ids: Iterable[int]) -> str:
    """Inverse of `text_to_ids`; pad ids are dropped so padded batches decode cleanly."""
    ids = list(ids)
    invalid = [i for i in ids if not 0 <= i < len(SYMBOLS)]
    if invalid:
        raise TextError(f"symbol ids out of range 0..{len(SYMBOLS) - 1}: {invalid}")
    return "".join(SYMBOLS[i] for i in ids if i != PAD_ID)


def check_text(text: str, max_chars: int) -> None:
    """Raise `TextError` if `text` is empty (or only whitespace) or longer than
    `max_chars` characters."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if not text.strip():
        raise TextError("text is empty")
    if len(text) > max_chars:
        raise TextError(f"text is too long: {len(text)} characters, the limit is {max_chars}")

"""English text front-end for text-to-mel models: `normalize_text` turns raw text into
lower-case spoken words, and `text_to_ids` maps those onto the symbol set."""
from vocoder.text.normalize import cardinal, normalize_text, ordinal, year
from vocoder.text.symbols import (
    PAD,
    PAD_ID,
    SYMBOLS,
    TextError,
    check_text,
    ids_to_text,
    text_to_ids,
)

__all__ = [
    "PAD", "PAD_ID", "SYMBOLS", "TextError", "cardinal", "check_text", "ids_to_text",
    "normalize_text", "ordinal", "text_to_ids", "year",
]

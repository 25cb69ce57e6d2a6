"""Where the bundled default checkpoint lives inside the package."""
from __future__ import annotations

from pathlib import Path

from vocoder.checkpoint import CONFIG_FILE, WEIGHTS_FILE

BUNDLED_DIR = Path(__file__).resolve().parent / "weights" / "default"


def default_checkpoint() -> Path | None:
    """The bundled checkpoint directory, or None while none is shipped."""
    if (BUNDLED_DIR / WEIGHTS_FILE).is_file() and (BUNDLED_DIR / CONFIG_FILE).is_file():
        return BUNDLED_DIR
    return None

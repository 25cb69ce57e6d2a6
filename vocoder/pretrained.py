"""Where the checkpoints bundled inside the package live: `weights/default/` holds the shipped
vocoder; `weights/tts/` is the slot for a text-to-mel model, empty in the repository until one
is copied there (docs/TTS.md)."""
from __future__ import annotations

from pathlib import Path

from vocoder.checkpoint import CONFIG_FILE, WEIGHTS_FILE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED_DIR = WEIGHTS_DIR / "default"
TTS_DIR = WEIGHTS_DIR / "tts"


def bundled(directory: Path) -> Path | None:
    """`directory` when it holds a whole checkpoint (weights and config), else None."""
    if (directory / WEIGHTS_FILE).is_file() and (directory / CONFIG_FILE).is_file():
        return directory
    return None


def default_checkpoint() -> Path | None:
    """The bundled vocoder checkpoint directory, or None while none is shipped."""
    return bundled(BUNDLED_DIR)

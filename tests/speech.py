"""Locations of the genuine speech clips shared beside the repository (../shared/data/speech)."""
from __future__ import annotations

from pathlib import Path

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


def speech_clip(source: str = "ljspeech", clip_id: str = "LJ001-0001") -> Path:
    """Path of one shared clip; fails loudly (never skips) when the shared data is absent."""
    path = SPEECH_DIR / source / f"{clip_id}.flac"
    if not path.is_file():
        raise FileNotFoundError(f"shared speech clip missing: {path} (tests need ../shared/data/speech)")
    return path

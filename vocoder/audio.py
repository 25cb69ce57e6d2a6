"""Audio file loading: any common container, any channel count, any rate in;
mono float32 at the model's rate out (resampled with soxr)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from vocoder.errors import AudioError


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float audio `(L,)` with soxr's high-quality filter."""
    if source_rate == target_rate:
        return audio
    return soxr.resample(audio, source_rate, target_rate, quality="HQ").astype(np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels of a `(L, C)` array; pass `(L,)` through."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio(source: str | Path | bytes | BinaryIO, sample_rate: int) -> np.ndarray:
    """Read wav/flac/ogg (or anything libsndfile reads) as mono float32 `(L,)` at `sample_rate`."""
    name = str(source) if isinstance(source, (str, Path)) else "uploaded audio"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise AudioError(f"{name}: no such file")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        audio, rate = soundfile.read(source, dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"{name}: not a readable audio file ({error})") from None
    audio = to_mono(audio)
    if audio.size == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    return resample(audio, rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM WAV (clipped to [-1, 1])."""
    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")

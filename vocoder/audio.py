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


# Every file this package writes holds 16-bit PCM; the extension picks the container.
OUTPUT_SUBTYPE = "PCM_16"


def check_output_path(path: str | Path) -> Path:
    """Refuse an output path `write_wav` could not write, so a user learns it before synthesis
    rather than after: an existing directory, a missing parent directory, or an extension
    that is not a libsndfile container for 16-bit PCM (.mp3 and .ogg are not)."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file name such as out.wav")
    if not path.parent.is_dir():
        raise AudioError(f"{path}: directory {path.parent} does not exist")
    container = path.suffix[1:].upper()
    if container not in soundfile.available_formats() or not soundfile.check_format(container, OUTPUT_SUBTYPE):
        given = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise AudioError(f"{path}: cannot write 16-bit audio with {given}; use .wav or .flac")
    return path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1]) in the container the
    extension names; `check_output_path` tells early whether that will work."""
    path = check_output_path(path)
    try:
        soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype=OUTPUT_SUBTYPE)
    except soundfile.LibsndfileError as error:
        raise AudioError(f"{path}: could not write audio ({error})") from None

"""Offline ASR intelligibility check: transcribe speech, score word error rate.

Uses PocketSphinx, whose US-English acoustic model, language model and dictionary
ship inside the PyPI wheel, so it runs without any download. Its absolute WER on
clean LJSpeech is roughly 10-40 %, so compare vocoded audio with the recording's WER.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from pocketsphinx import Decoder

from vocoder.audio import resample

ASR_RATE = 16000

_WORD = re.compile(r"[a-z0-9']+")


@lru_cache(maxsize=1)
def _decoder() -> Decoder:
    # Loading the 27 MB language model takes about a second; reuse one decoder.
    return Decoder(samprate=ASR_RATE, loglevel="FATAL")


def transcribe(audio: np.ndarray, sample_rate: int) -> str:
    """Lower-case, unpunctuated transcript of English speech `audio (L,)` in [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono of shape (L,), got shape {audio.shape}")
    pcm = (np.clip(resample(audio, sample_rate, ASR_RATE), -1.0, 1.0) * 32767).astype(np.int16)
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def normalize_words(text: str) -> list[str]:
    """Lower-case words with punctuation dropped; hyphens split words ("ne-plus-ultra" is 3)."""
    return _WORD.findall(text.lower().replace("-", " "))


def word_error_rate(ref_text: str, hyp_text: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after `normalize_words`.

    May exceed 1 when the hypothesis has many insertions.
    """
    reference = normalize_words(ref_text)
    hypothesis = normalize_words(hyp_text)
    if not reference:
        raise ValueError("reference text has no words")
    # Word-level Levenshtein distance, keeping one row of the table at a time.
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ref_word != hyp_word),
            ))
        previous = current
    return previous[-1] / len(reference)

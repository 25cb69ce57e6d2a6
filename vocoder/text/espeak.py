"""The espeak-ng command-line synthesizer, behind the labelled fallback text front-end used
when no trained text-to-mel model is available. The CLI runs without a shell, reads the
text on stdin and is killed after a time limit."""
from __future__ import annotations

import shutil
import subprocess

from vocoder.errors import VocoderError

DEBIAN_PACKAGE = "espeak-ng"
EXECUTABLE = "espeak-ng"
DEFAULT_WORDS_PER_MINUTE = 175
# espeak-ng's own bounds on -s.
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450


class EspeakError(VocoderError):
    """espeak-ng is not installed, failed, or ran past its time limit."""


def find_espeak(executable: str = EXECUTABLE) -> str:
    """Full path of the espeak-ng executable, or `EspeakError` naming the Debian package."""
    path = shutil.which(executable)
    if path is None:
        raise EspeakError(f"{executable} not found on PATH: install the Debian package {DEBIAN_PACKAGE} "
                          f"(apt-get install {DEBIAN_PACKAGE})")
    return path


def words_per_minute(length_scale: float) -> int:
    """espeak-ng speed for a duration multiplier (2.0: twice as long), clamped to its range."""
    speed = round(DEFAULT_WORDS_PER_MINUTE / length_scale)
    return min(max(speed, MIN_WORDS_PER_MINUTE), MAX_WORDS_PER_MINUTE)


def render_wav(text: str, speed: int = DEFAULT_WORDS_PER_MINUTE, voice: str = "en-us",
               timeout_s: float = 10.0, executable: str = EXECUTABLE) -> bytes:
    """WAV file bytes (espeak-ng's own rate, 22050 Hz) of espeak-ng reading `text`.

    `text` goes in on stdin, so text that looks like an option is still read aloud.
    """
    command = [find_espeak(executable), "--stdout", "--stdin", "-v", voice, "-s", str(speed)]
    try:
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True,
                                timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise EspeakError(f"espeak-ng took longer than {timeout_s:g} s") from None
    if result.returncode != 0 or not result.stdout:
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EspeakError(f"espeak-ng failed with exit status {result.returncode}"
                          + (f": {detail[-1]}" if detail else ""))
    return result.stdout

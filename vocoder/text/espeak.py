"""The espeak-ng command-line synthesizer, behind the labelled fallback text front-end used
when no trained text-to-mel model is available. The CLI runs without a shell, reads the
text from a file on stdin, and is killed after a time limit or once its output passes a size
limit, so that no text makes it write (or us hold) more audio than the caller can use."""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time

from vocoder.errors import VocoderError

DEBIAN_PACKAGE = "espeak-ng"
EXECUTABLE = "espeak-ng"
DEFAULT_WORDS_PER_MINUTE = 175
# espeak-ng's own bounds on -s.
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
# What `--stdout` writes: a 44-byte WAV header, then 16-bit mono samples at 22050 Hz.
SAMPLE_RATE = 22050
WAV_HEADER_BYTES = 44
BYTES_PER_SAMPLE = 2
# Reading rates at DEFAULT_WORDS_PER_MINUTE that espeak-ng does not beat on English: it reads
# prose, numbers and abbreviations at 13-27 letters and 3-11 words a second. Only junk (one vowel
# repeated, a run of "i i i") is faster, so an estimate from these errs towards short speech.
MAX_LETTERS_PER_SECOND = 100.0
MAX_WORDS_PER_SECOND = 20.0
READ_BYTES = 1 << 16


class EspeakError(VocoderError):
    """espeak-ng is not installed, failed, or ran past its time limit."""


class EspeakOutputTooLong(VocoderError):
    """espeak-ng's speech passed the caller's `max_samples`; it was stopped there."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        super().__init__(f"espeak-ng's speech is longer than {max_samples} samples ({max_samples / SAMPLE_RATE:.1f} s)")


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


def min_seconds(text: str, speed: int = DEFAULT_WORDS_PER_MINUTE) -> float:
    """A low estimate of how long espeak-ng reads normalized `text` at `speed` words a minute,
    from its letters and words alone (nothing is run)."""
    letters = sum(character.isalpha() for character in text)
    words = len(text.split())
    at_default_speed = max(letters / MAX_LETTERS_PER_SECOND, words / MAX_WORDS_PER_SECOND)
    return at_default_speed * DEFAULT_WORDS_PER_MINUTE / speed


def render_wav(text: str, speed: int = DEFAULT_WORDS_PER_MINUTE, voice: str = "en-us",
               timeout_s: float = 10.0, executable: str = EXECUTABLE, max_samples: int | None = None) -> bytes:
    """WAV file bytes (espeak-ng's own rate, `SAMPLE_RATE`) of espeak-ng reading `text`.

    `text` goes in on stdin, so text that looks like an option is still read aloud.
    With `max_samples`, espeak-ng is killed as soon as it writes more than that many samples,
    and `EspeakOutputTooLong` is raised.
    """
    command = [find_espeak(executable), "--stdout", "--stdin", "-v", voice, "-s", str(speed)]
    # Files, not pipes, for stdin and stderr: only stdout is read while espeak-ng runs, so a long
    # text or a chatty error cannot fill a pipe buffer and deadlock both processes.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
        stdin.write(text.encode("utf-8"))
        stdin.seek(0)
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr)
        try:
            output = _read_bounded(process, timeout_s, max_samples)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        if process.returncode != 0 or not output:
            stderr.seek(0)
            detail = stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise EspeakError(f"espeak-ng failed with exit status {process.returncode}"
                              + (f": {detail[-1]}" if detail else ""))
    return output


def _read_bounded(process: subprocess.Popen, timeout_s: float, max_samples: int | None) -> bytes:
    """All of espeak-ng's stdout, or an error once it runs past `timeout_s` or `max_samples`."""
    deadline = time.monotonic() + timeout_s
    max_bytes = None if max_samples is None else WAV_HEADER_BYTES + BYTES_PER_SAMPLE * max_samples
    chunks: list[bytes] = []
    size = 0
    descriptor = process.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
            raise EspeakError(f"espeak-ng took longer than {timeout_s:g} s")
        chunk = os.read(descriptor, READ_BYTES)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise EspeakOutputTooLong(max_samples)
        chunks.append(chunk)

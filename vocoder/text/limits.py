"""The error a text front-end raises when a text's speech would be longer than the caller allows,
raised before the long mel (or the audio behind it) is built, so that a short text cannot make
the front-end do minutes of work."""
from __future__ import annotations

from vocoder.errors import VocoderError


class SpeechTooLong(VocoderError):
    """The speech for a text has more than `max_frames` frames: `frames` of them, or, when
    `estimated`, about that many or more (the work was stopped, or never started, before the end)."""

    def __init__(self, frames: int, max_frames: int, estimated: bool) -> None:
        self.frames = frames
        self.max_frames = max_frames
        self.estimated = estimated
        amount = f"an estimated {frames} or more" if estimated else str(frames)
        super().__init__(f"the speech for this text has {amount} frames; the limit is {max_frames}")


def check_speech_frames(frames: int, max_frames: int | None, estimated: bool) -> None:
    """`SpeechTooLong` if `frames` exceeds `max_frames` (None: no limit)."""
    if max_frames is not None and frames > max_frames:
        raise SpeechTooLong(frames, max_frames, estimated)

"""Text to mel behind one interface, `TextFrontend`: the trained text-to-mel flow, or the
clearly labelled espeak-ng fallback when no trained model is available. Both return mels
in the project's convention (`vocoder.mel`), ready for the vocoder or for mel edits."""
from __future__ import annotations

import abc
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vocoder.audio import load_audio
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.text import checkpoint as tts_checkpoint
from vocoder.text import espeak
from vocoder.text.limits import SpeechTooLong, check_speech_frames
from vocoder.text.model import TextToMel, check_controls, prepare_text


class TextFrontend(abc.ABC):
    """Something that turns English text into a mel `(n_mels, T)`.

    `name` identifies the implementation, `description` says what it is in one line,
    `trained` is False for the fallback, and `mel_config` is the mel convention of the
    output, which the vocoder must share.
    """

    name: str
    description: str
    trained: bool
    mel_config: MelConfig

    @abc.abstractmethod
    def synthesize_mel(self, text: str, noise_scale: float = 0.667, length_scale: float = 1.0,
                       seed: int | None = None, max_frames: int | None = None) -> torch.Tensor:
        """Float32 mel `(n_mels, T)` on the CPU for raw English `text`.

        `noise_scale`: temperature of the sampled latent; `length_scale`: duration
        multiplier (2.0 is half as fast, same pitch); `seed`: reproducible sampling.
        Pitch is left to the caller, as a mel-domain edit of the result.
        Raises `TextError` for text that cannot be spoken, and `SpeechTooLong` as soon as
        the mel is known to be longer than `max_frames`, before it (or its audio) is built.
        """

    @abc.abstractmethod
    def min_frames(self, text: str, length_scale: float = 1.0) -> int:
        """A cheap low estimate of the frames of `text`'s mel, from the text alone; `TextError`
        for text that cannot be spoken."""

    def check_length(self, text: str, length_scale: float, max_frames: int) -> int:
        """`min_frames`, or `SpeechTooLong` if that already exceeds `max_frames`: refused without the work."""
        frames = self.min_frames(text, length_scale)
        check_speech_frames(frames, max_frames, estimated=True)
        return frames


class FlowTextFrontend(TextFrontend):
    """The trained text-to-mel flow (`vocoder.text.model.TextToMel`)."""

    name = "flow-tts"
    trained = True

    def __init__(self, model: TextToMel, mel_config: MelConfig, description: str) -> None:
        self.model = model.eval()
        self.mel_config = mel_config
        self.description = description

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "FlowTextFrontend":
        model, checkpoint = tts_checkpoint.load_model(path, device)
        parameters = sum(p.numel() for p in model.parameters())
        description = checkpoint.metadata.get(
            "description", f"trained text-to-mel flow, {parameters / 1e6:.1f} M parameters")
        return cls(model, checkpoint.mel, f"{description} (checkpoint {path})")

    def synthesize_mel(self, text: str, noise_scale: float = 0.667, length_scale: float = 1.0,
                       seed: int | None = None, max_frames: int | None = None) -> torch.Tensor:
        return self.model.synthesize(text, noise_scale, length_scale, seed, max_frames).float().cpu()

    def min_frames(self, text: str, length_scale: float = 1.0) -> int:
        # Exact, for any weights: every token's predicted duration is rounded up to a whole frame.
        _, ids = prepare_text(text)
        return len(ids)


class EspeakFrontend(TextFrontend):
    """espeak-ng's formant synthesis, analysed into a mel by the shared `MelSpectrogram`.

    `noise_scale` and `seed` have no effect: espeak-ng is deterministic. `length_scale`
    sets its speaking rate, clamped to what espeak-ng accepts.
    """

    name = "espeak-ng-fallback"
    description = ("espeak-ng formant synthesis analysed into a mel: a fallback, NOT a trained "
                   "text-to-mel model; expect robotic speech")
    trained = False

    def __init__(self, mel_config: MelConfig | None = None, voice: str = "en-us", timeout_s: float = 10.0,
                 executable: str = espeak.EXECUTABLE) -> None:
        self.executable = espeak.find_espeak(executable)
        self.mel_config = mel_config or MelConfig()
        self.voice = voice
        self.timeout_s = timeout_s
        self._mel = MelSpectrogram(self.mel_config)

    def synthesize_mel(self, text: str, noise_scale: float = 0.667, length_scale: float = 1.0,
                       seed: int | None = None, max_frames: int | None = None) -> torch.Tensor:
        check_controls(noise_scale, length_scale)
        # The normalized text reads the same words the trained model would, and holds no
        # espeak-ng markup such as "[[phonemes]]".
        normalized, _ = prepare_text(text)
        speed = espeak.words_per_minute(length_scale)
        check_speech_frames(self._min_frames(normalized, speed), max_frames, estimated=True)
        max_samples = None
        if max_frames is not None:
            # One frame more than allowed, at espeak-ng's rate: output past it cannot fit.
            max_samples = math.ceil((max_frames + 1) * self.mel_config.hop_length * espeak.SAMPLE_RATE
                                    / self.mel_config.sample_rate)
        try:
            wav = espeak.render_wav(normalized, speed, self.voice, self.timeout_s, self.executable, max_samples)
        except espeak.EspeakOutputTooLong:
            raise SpeechTooLong(max_frames + 1, max_frames, estimated=True) from None
        audio = load_audio(wav, self.mel_config.sample_rate)
        audio = np.pad(audio, (0, max(0, self.mel_config.min_samples - audio.size)))
        with torch.no_grad():
            return self._mel(torch.from_numpy(audio))[0]

    def min_frames(self, text: str, length_scale: float = 1.0) -> int:
        normalized, _ = prepare_text(text)
        return self._min_frames(normalized, espeak.words_per_minute(length_scale))

    def _min_frames(self, normalized: str, speed: int) -> int:
        seconds = espeak.min_seconds(normalized, speed)
        return math.floor(seconds * self.mel_config.sample_rate / self.mel_config.hop_length)


def load_text_frontend(path: str | Path | None = None, device: str | torch.device = "cpu",
                       **espeak_options: Any) -> TextFrontend:
    """The trained flow from `path`, else the bundled one (`vocoder/weights/tts/`), else the
    espeak-ng fallback, with a warning; `espeak_options` go to `EspeakFrontend`."""
    path = path if path is not None else tts_checkpoint.bundled_checkpoint()
    if path is not None:
        return FlowTextFrontend.from_pretrained(path, device)
    warnings.warn("no trained text-to-mel checkpoint: using the espeak-ng fallback, not a trained model",
                  stacklevel=2)
    return EspeakFrontend(**espeak_options)

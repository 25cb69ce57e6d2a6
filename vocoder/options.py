"""Every synthesis option, defined once: its name, type, default, range and meaning. The library
checks values against these, the CLIs build their flags from them, and the service derives its
query parameters, JSON fields, OpenAPI schema and /v1/models limits from them (server/options.py).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from vocoder.errors import VocoderError

# The largest seed of the CLI, the library and the service alike: what fits a signed 64-bit
# integer, so a seed means the same noise in every client (torch itself also takes uint64).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Option:
    """One option: `low`-`high` is its inclusive range (None: unbounded), and a `default` of
    None means "not given" (the option's type then also admits None)."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None

    @property
    def annotation(self) -> Any:
        """The option's type as an annotation: `type | None` when it may be left out."""
        return self.type if self.default is not None else self.type | None

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def range_text(self) -> str:
        """The range as messages write it: "0-1.5", or "-12 to 12" when it starts below 0."""
        separator = " to " if self.low < 0 else "-"
        return f"{_number(self.low)}{separator}{_number(self.high)}"

    def check(self, value: Any, label: str | None = None, error: type[VocoderError] = VocoderError) -> Any:
        """`value`, or `error` naming `label` (default: the option's name) and the range; NaN is refused."""
        if value is not None and self.bounded and not self.low <= value <= self.high:
            raise error(f"{label or self.name} must be within {self.range_text}, got {value}")
        return value


def add_flag(parser: argparse.ArgumentParser, option: Option, help_text: str | None = None) -> None:
    """`--name` for `option` on a command line: its type, its default, and its range in the help."""
    flag = "--" + option.name.replace("_", "-")
    help_text = help_text or option.help
    if option.type is bool:
        parser.add_argument(flag, action="store_true", default=option.default, help=help_text)
        return
    facts = [option.range_text] if option.bounded else []
    if option.default is not None:
        facts.append(f"default {_number(option.default)}")
    parser.add_argument(flag, type=option.type, default=option.default, help=f"{help_text} ({', '.join(facts)})")


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


SIGMA = Option("sigma", float, 0.6, "latent temperature", 0.0, 1.5)
SEED = Option("seed", int, None, "same request + same seed = same audio", 0, MAX_SEED)
DENOISE = Option("denoise", float, 0.0, "denoiser strength", 0.0, 1.0)
PITCH = Option("pitch", float, 0.0, "pitch shift in semitones; formants and duration kept", -12.0, 12.0)
SPEED = Option("speed", float, 1.0, "tempo factor (2: twice as fast), pitch kept", 0.25, 4.0)
REDRAW = Option("redraw", bool, False, "replace the recording's latent with fresh noise")
NOISE_SCALE = Option("noise_scale", float, 0.667, "temperature of the text-to-mel sample", 0.0, 2.0)
FORMAT = Option("format", str, "wav", "output audio format")
SAMPLE_RATE = Option("sample_rate", int, None, "resample the output to this rate", 8000, 48000)
STREAM = Option("stream", bool, False, "send audio in chunks as it is generated (wav or pcm)")

"""Requested against measured pitch and speed edits on real LJSpeech clips, as a Markdown table:
(a) the mel-domain edit inverted by Griffin-Lim (no model), (b) end to end through a checkpoint
(encode, edit, decode). With a random-init model, (b) is printed but marked meaningless.

Usage: python benchmarks/edit_table.py [--checkpoint DIR] [--clips LJ001-0002 ...] [--seconds 3]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import librosa
import numpy as np
import torch

from vocoder import latents
from vocoder.audio import load_audio
from vocoder.evaluation.griffin_lim import griffin_lim_from_mel
from vocoder.evaluation.metrics import EDITED_F0_RANGE_HZ, f0_track
from vocoder.inference import Vocoder
from vocoder.mel_transform import frame_map, shift_pitch
from vocoder.options import SIGMA

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "ljspeech"
DEFAULT_CLIPS = ("LJ001-0002", "LJ001-0003", "LJ001-0005")
PITCHES = (-7.0, -3.0, 0.0, 3.0, 7.0)
RATES = (0.5, 0.8, 1.25, 2.0)
ON_TARGET_SEMITONES = 1.0
SPEECH_TOP_DB = 30.0


def f0_change(reference: np.ndarray, edited: np.ndarray, target: float, rate: float = 1.0) -> tuple[float, float]:
    """Median F0 change in semitones over frames voiced in both, edited frame i set against
    reference frame i * rate, and the share of those frames within `ON_TARGET_SEMITONES` of `target`."""
    source = np.minimum(np.round(np.arange(len(edited)) * rate).astype(int), len(reference) - 1)
    change = 12.0 * np.log2(edited / reference[source])
    change = change[np.isfinite(change)]
    if not change.size:
        return float("nan"), 0.0
    return float(np.median(change)), float(np.mean(np.abs(change - target) <= ON_TARGET_SEMITONES))


def speech_span(audio: np.ndarray) -> int:
    """Samples from the first to the last sound within `SPEECH_TOP_DB` of the loudest."""
    start, end = librosa.effects.trim(audio, top_db=SPEECH_TOP_DB)[1]
    return int(end - start)


@dataclass
class Cell:
    """One measured quantity over all clips."""

    values: list[float] = field(default_factory=list)
    on_target: list[float] = field(default_factory=list)

    def show(self, signed: bool = True) -> str:
        values = np.array(self.values)
        measured = values[np.isfinite(values)]
        if not measured.size:
            return "no frame voiced in both"
        mean, low, high = measured.mean(), measured.min(), measured.max()
        text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" if signed else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
        if self.on_target:
            text += f", {100 * np.mean(self.on_target):.0f}% on target"
        missing = values.size - measured.size
        return text + (f" ({missing} clip(s) with no frame voiced in both)" if missing else "")


def measure(model: Vocoder, clips: list[np.ndarray], sigma: float, seed: int) -> tuple[dict, dict]:
    config = model.mel.config
    rate_hz = config.sample_rate
    pitch_cells = {(s, path): Cell() for s in PITCHES for path in ("gl", "kept", "redrawn")}
    speed_cells = {(r, what): Cell() for r in RATES
                   for what in ("gl_length", "gl_span", "gl_f0", "model_length", "model_span", "model_f0")}
    for number, audio in enumerate(clips, 1):
        print(f"clip {number}/{len(clips)}", file=sys.stderr)
        reference = f0_track(audio, rate_hz, EDITED_F0_RANGE_HZ)
        latent = latents.encode(model, audio)
        redrawn = latents.redraw(latent, sigma, seed)
        mel = latent.mel[0].numpy()
        for s in PITCHES:
            outputs = {
                "gl": griffin_lim_from_mel(shift_pitch(mel, s, config), config, length=audio.size),
                "kept": latents.decode(model, latents.pitch(latent, s)),
                "redrawn": latents.decode(model, latents.pitch(redrawn, s)),
            }
            for path, out in outputs.items():
                median, share = f0_change(reference, f0_track(out, rate_hz, EDITED_F0_RANGE_HZ), s)
                pitch_cells[s, path].values.append(median)
                pitch_cells[s, path].on_target.append(share)
        for r in RATES:
            source, length = frame_map(latent.frames, latent.length, r, config.hop_length)
            outputs = {
                "gl": griffin_lim_from_mel(mel[:, source], config, length=length),
                # What `vocoder edit` does (a pitch-conditioned model redraws z; see latents.edit_and_decode).
                "model": latents.edit_and_decode(model, latent, rate=r),
            }
            for path, out in outputs.items():
                speed_cells[r, f"{path}_length"].values.append(out.size / audio.size)
                speed_cells[r, f"{path}_span"].values.append(speech_span(out) / speech_span(audio))
                median, share = f0_change(reference, f0_track(out, rate_hz, EDITED_F0_RANGE_HZ), 0.0, r)
                speed_cells[r, f"{path}_f0"].values.append(median)
                speed_cells[r, f"{path}_f0"].on_target.append(share)
    return pitch_cells, speed_cells


def render(pitch_cells: dict, speed_cells: dict, model_note: str, sigma: float) -> str:
    lines = [
        "### Pitch: requested vs measured F0 change (semitones)",
        "",
        "Median over frames voiced in both of the frame-by-frame change against the original clip; "
        "mean [min, max] over clips, and the share of frames within "
        f"±{ON_TARGET_SEMITONES:g} st of the request.",
        "",
        f"| requested | (a) Griffin-Lim | (b) model, z kept{model_note} "
        f"| (b) model, z redrawn σ={sigma:g}{model_note} |",
        "|---:|---|---|---|",
    ]
    for s in PITCHES:
        lines.append(f"| {s:+g} | " + " | ".join(pitch_cells[s, p].show() for p in ("gl", "kept", "redrawn")) + " |")
    lines += [
        "",
        "### Speed: requested vs measured duration, and the pitch it leaves",
        "",
        "Duration ratios edited/original: the whole output, and the speech span (first to last sound "
        f"within {SPEECH_TOP_DB:g} dB of the peak). F0 change: median over output frames against the original "
        f"frame they were taken from (share within ±{ON_TARGET_SEMITONES:g} st).",
        "",
        "| rate | requested duration | (a) GL duration | (a) GL speech span | (a) GL F0 change (st) "
        f"| (b) model duration{model_note} | (b) model speech span{model_note} | (b) model F0 change{model_note} |",
        "|---:|---:|---|---|---|---|---|---|",
    ]
    for r in RATES:
        cells = [speed_cells[r, k].show(signed=False) for k in ("gl_length", "gl_span")]
        cells.append(speed_cells[r, "gl_f0"].show())
        cells += [speed_cells[r, k].show(signed=False) for k in ("model_length", "model_span")]
        cells.append(speed_cells[r, "model_f0"].show())
        lines.append(f"| {r:g} | {1 / r:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint directory for (b) (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS), help="LJSpeech ids in the shared data")
    parser.add_argument("--seconds", type=float, default=3.0, help="use the first N seconds of each clip")
    parser.add_argument("--sigma", type=float, default=SIGMA.default, help="temperature of the redrawn-z column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Vocoder.load_or_random(args.checkpoint, args.device)
    random_init = bool(model.metadata.get("random_init"))
    clips = [load_audio(SPEECH_DIR / f"{clip}.flac", model.sample_rate)[: round(args.seconds * model.sample_rate)]
             for clip in args.clips]
    with torch.inference_mode():
        pitch_cells, speed_cells = measure(model, clips, args.sigma, args.seed)

    model_name = "RANDOM-INIT model (no checkpoint)" if random_init else (args.checkpoint or "bundled model")
    command = " ".join(["python benchmarks/edit_table.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"## Latent editing: requested vs measured\n\n`{command}`\n")
    print(f"Clips: {', '.join(args.clips)} (first {args.seconds:g} s each, LJSpeech). Model for (b): {model_name}. "
          f"Took {time.perf_counter() - started:.0f} s on {args.device}.\n")
    if random_init:
        print("**(b) is meaningless here: a random-init flow ignores its mel, so the (b) columns (marked †) "
              "only show the latent plumbing, not the edits.**\n")
    print(render(pitch_cells, speed_cells, " †" if random_init else "", args.sigma))
    return 0


if __name__ == "__main__":
    sys.exit(main())

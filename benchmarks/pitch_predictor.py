"""How closely each checkpoint's pitch predictor follows pYIN on audio clips it never trained on,
as a Markdown table: F0 RMSE in cents and the share of gross errors (over 100 cents) on frames
that both call voiced, and the voicing error rate, per clip and pooled over frames.

These are the predictor's own errors, before any flow: with a flow that follows its phase
(`loss.pitch_phase: aligned`), `vocoder eval`'s F0 RMSE cannot be much better.

Usage: python benchmarks/pitch_predictor.py --clips DIR_OR_FILE... --checkpoint NAME=DIR ...
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from training.pitch_fit import pyin_labels
from vocoder.audio import load_audio
from vocoder.inference import Vocoder

GROSS_CENTS = 100.0


def clip_paths(entries: list[str]) -> list[Path]:
    paths: list[Path] = []
    for entry in map(Path, entries):
        paths.extend(sorted(p for p in entry.iterdir() if p.suffix in (".flac", ".wav")) if entry.is_dir() else [entry])
    return paths


def frame_errors(model: Vocoder, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cents off pYIN on frames both call voiced, and per-frame voicing disagreement."""
    f0, voiced = pyin_labels(audio, model.sample_rate, model.hop_length)
    with torch.no_grad():
        log_f0, voicing_logit = model.flow.pitch(model.mel_spectrogram(torch.from_numpy(audio)[None]))
    frames = min(len(f0), log_f0.shape[1])
    predicted_voiced = (voicing_logit[0, :frames] > 0).numpy()
    label_voiced = voiced[:frames] > 0
    both = predicted_voiced & label_voiced
    cents = 1200 / math.log(2) * (log_f0[0, :frames].numpy()[both] - np.log(f0[:frames][both]))
    return cents, predicted_voiced != label_voiced


def row(name: str, cents: np.ndarray, disagree: np.ndarray) -> str:
    rmse = float(np.sqrt(np.mean(cents ** 2))) if cents.size else float("nan")
    gross = float(np.mean(np.abs(cents) > GROSS_CENTS)) if cents.size else float("nan")
    return f"| {name} | {rmse:.0f} | {gross:.3f} | {float(np.mean(disagree)):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", required=True, help="audio files, or directories of them")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="NAME=DIR",
                        help="checkpoints whose predictors to score")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = clip_paths(args.clips)
    for entry in args.checkpoint:
        name, _, directory = entry.partition("=")
        model = Vocoder.from_pretrained(directory or name)
        if model.flow.pitch is None:
            raise SystemExit(f"{directory or name}: this model has no pitch predictor")
        print(f"\n### {name}: `{model.flow.config.pitch_predictor}` predictor\n")
        print("| clip | F0 RMSE (cents) | gross errors | V/UV error |\n|---|---:|---:|---:|")
        pooled_cents, pooled_disagree = [], []
        for path in paths:
            cents, disagree = frame_errors(model, load_audio(path, model.sample_rate))
            pooled_cents.append(cents)
            pooled_disagree.append(disagree)
            print(row(path.stem, cents, disagree), flush=True)
        print(row("**all frames**", np.concatenate(pooled_cents), np.concatenate(pooled_disagree)))


if __name__ == "__main__":
    main()

"""`vocoder eval`: copy-synthesis evaluation of a checkpoint over a folder of clips,
written to results.json, results.md and spectrograms.png.

The bundled model's card reports the held-out LJSpeech clips, from the repository root:
    vocoder eval --data ../shared/data/speech/ljspeech --clips LJ001-0025..LJ001-0032 --out eval-out
"""
from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from vocoder.checkpoint import WEIGHTS_FILE
from vocoder.errors import VocoderError
from vocoder.evaluation import report as reports
from vocoder.evaluation.harness import evaluate, find_clips, select_clips
from vocoder.inference import Vocoder
from vocoder.options import SIGMA, add_flag
from vocoder.pretrained import default_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vocoder eval",
        description="Copy-synthesis (audio -> mel -> audio) over a folder of clips, scored for the model, "
                    "Griffin-Lim and the recordings themselves.")
    parser.add_argument("--data", required=True,
                        help="folder of .wav/.flac/.ogg clips; an optional metadata.csv "
                             "(id|text|normalized text) gives transcripts for the ASR check")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model, "
                                             "else a randomly initialised one, with a warning)")
    parser.add_argument("--out", default="eval-out", help="output folder (default ./eval-out)")
    add_flag(parser, SIGMA)
    parser.add_argument("--seed", type=int, default=0, help="latent noise seed, the same for every clip (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--limit", type=int, help="evaluate at most N clips")
    parser.add_argument("--clips", help="comma-separated clip ids or inclusive ranges, "
                                        "e.g. LJ001-0025..LJ001-0032 (default: all)")
    parser.add_argument("--no-asr", dest="asr", action="store_false", help="skip the PocketSphinx WER")
    parser.add_argument("--plot-clip", help="clip id for spectrograms.png (default: the first clip)")
    return parser


def checkpoint_identity(path: str | None) -> dict[str, Any]:
    """Which weights were evaluated: the checkpoint folder and its weights' SHA-256."""
    folder = Path(path) if path is not None else default_checkpoint()
    if folder is None:
        return {"path": None, "sha256": None}
    if folder.is_file():
        folder = folder.parent
    digest = hashlib.sha256()
    with open(folder / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(folder.resolve()), "sha256": digest.hexdigest()}


def run(args: argparse.Namespace, command: str) -> int:
    SIGMA.check(args.sigma, "--sigma")
    if args.limit is not None and args.limit < 1:
        raise VocoderError(f"--limit must be at least 1, got {args.limit}")
    started = time.perf_counter()
    # Check the data before spending seconds on loading the model.
    clips = select_clips(find_clips(args.data), args.clips, args.limit)
    if args.plot_clip is not None and args.plot_clip not in {clip.id for clip in clips}:
        raise VocoderError(f"--plot-clip {args.plot_clip} is not among the selected clips")
    if args.asr and not any(clip.text for clip in clips):
        print(f"note: no transcripts for these clips in {Path(args.data) / 'metadata.csv'}; "
              "ASR WER is skipped", file=sys.stderr)
    with warnings.catch_warnings():
        # The random-init warning must reach the user every time, not once per session.
        warnings.simplefilter("always")
        model = Vocoder.load_or_random(args.checkpoint, args.device)
    result = evaluate(model, clips, sigma=args.sigma, seed=args.seed, asr=args.asr, plot_clip=args.plot_clip)
    result.info["command"] = command
    result.info["checkpoint"] = checkpoint_identity(args.checkpoint)
    result.info["elapsed_seconds"] = round(time.perf_counter() - started, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports.write_json(result, out / reports.JSON_FILE)
    reports.write_markdown(result, out / reports.MARKDOWN_FILE)
    reports.plot_spectrograms(result, out / reports.FIGURE_FILE, model.sample_rate, model.hop_length)
    print(reports.means_table(result))
    print(f"\n{len(clips)} clips in {result.info['elapsed_seconds']} s; wrote {out / reports.JSON_FILE}, "
          f"{out / reports.MARKDOWN_FILE}, {out / reports.FIGURE_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vocoder eval`; `argv` excludes the word `eval`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, shlex.join(["vocoder", "eval", *argv]))
    except (VocoderError, OSError) as error:
        print(f"vocoder eval: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

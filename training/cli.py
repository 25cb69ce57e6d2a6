"""`vocoder train`: build the config from a recipe, `--data`/`--out` and dotted overrides,
then train, fine-tune (`--init`) or resume (`--resume`) the vocoder or, with `task: acoustic`,
the text-to-mel model. Works the same under torchrun."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig, apply_overrides, config_from_dict, dump_yaml, read_yaml
from training.state import find_resume_dir, saved_train_config
from vocoder.errors import VocoderError

EPILOG = """\
overrides: any config key as section.key=value, e.g. train.max_steps=100 optim.lr=3e-4
  model=efficient-small model.n_channels=64 loss.stft_weight=1.0

examples:
  vocoder train --config recipes/ljspeech/fast.yaml --data DATA/LJSpeech-1.1 --out runs/fast
  vocoder train --resume runs/fast                      # continue exactly where it stopped
  vocoder train --config recipes/ljspeech/fast.yaml --init CKPT --out runs/ft   # fine-tune
  vocoder train --config recipes/ljspeech/acoustic.yaml --data DATA/LJSpeech-1.1 --out runs/tts  # text to mel
  torchrun --nproc_per_node 8 -m vocoder.cli train --config recipes/ljspeech/waveglow.yaml ...
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocoder train", description="Train a flow vocoder or a text-to-mel flow.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML (e.g. recipes/ljspeech/fast.yaml); with --resume, "
                                         "replaces the run's saved config")
    parser.add_argument("--data", action="append", metavar="PATH",
                        help="dataset dir, dir of datasets, or filelist of audio paths; repeatable; "
                             "replaces data.paths")
    parser.add_argument("--out", help="run directory (replaces out_dir)")
    parser.add_argument("--init", metavar="CKPT", help="start from the weights of this checkpoint (a vocoder's, "
                                                        "or a text-to-mel model's for task: acoustic)")
    parser.add_argument("--resume", nargs="?", const="", metavar="DIR",
                        help="continue a run exactly: a checkpoint dir or a run dir (default: --out / out_dir)")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="checkpoint and stop after this step, as an interruption would (for time-sliced jobs)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def _absolute(config: TrainConfig) -> TrainConfig:
    """Make data and output paths absolute, so a saved config works from any directory."""
    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else path

    data = replace(config.data, paths=[resolved(p) for p in config.data.paths],
                   train_filelist=resolved(config.data.train_filelist),
                   val_filelist=resolved(config.data.val_filelist))
    return replace(config, data=data, out_dir=str(Path(config.out_dir).resolve()))


def prepare_run(args: argparse.Namespace) -> tuple[Any, Any, Path | None]:
    """(resolved config, init checkpoint, resume directory) from parsed arguments."""
    from training.trainer import load_init, resolve_model

    resume_dir = None
    if args.resume is not None:
        if args.init:
            raise ConfigError("--init and --resume exclude each other: --resume already restores the weights")
        if args.resume:
            where = Path(args.resume)
        else:
            out = args.out or (read_yaml(args.config).get("out_dir") if args.config else None)
            if out is None:
                raise ConfigError("--resume needs a directory (or --out / a recipe with out_dir)")
            where = Path(out)
        resume_dir = find_resume_dir(where)
        saved = saved_train_config(resume_dir)
        if saved is None and not args.config:
            raise ConfigError(f"{resume_dir}: holds no training config; pass --config")
        raw = read_yaml(args.config) if args.config else saved
        if args.out is None and resume_dir.parent.name == "checkpoints":
            raw = {**raw, "out_dir": str(resume_dir.parent.parent)}
    elif args.config:
        raw = read_yaml(args.config)
    else:
        raise ConfigError("give --config RECIPE (see recipes/) or --resume RUN_DIR")
    overrides = list(args.overrides)
    raw = apply_overrides(raw, overrides)
    if args.data:
        raw = {**raw, "data": {**(raw.get("data") or {}), "paths": list(args.data)}}
    if args.out:
        raw = {**raw, "out_dir": args.out}
    config = _absolute(config_from_dict(raw))
    init = load_init(config, args.init) if args.init else None
    return resolve_model(config, init), init, resume_dir


def main(argv: list[str]) -> int:
    """Entry point of `vocoder train`; `argv` excludes the word `train`."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        config, init, resume_dir = prepare_run(args)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        from training.trainer import Trainer, TrainingError

        try:
            trainer = Trainer(config, init=init, resume=resume_dir, init_path=args.init)
            trainer.fit(stop_at=args.stop_at)
        except TrainingError as error:
            print(f"vocoder train: {error}", file=sys.stderr)
            return 1
    except (VocoderError, OSError) as error:
        print(f"vocoder train: error: {error}", file=sys.stderr)
        return 2
    return 0

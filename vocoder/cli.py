"""The `vocoder` command line: thin wrappers over the library.

Subcommands of `training/` and `server/` are registered here but imported only when run,
so the core package stays import-light and never depends on them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from vocoder.errors import VocoderError
from vocoder.options import DENOISE, PITCH, REDRAW, SEED, SIGMA, SPEED, add_flag

# name -> (module, help); each module exposes `main(argv: list[str]) -> int`.
DELEGATED: dict[str, tuple[str, str]] = {
    "train": ("training.cli", "train a flow (see `vocoder train --help`)"),
    "prepare": ("training.prepare", "download and prepare a dataset, e.g. `vocoder prepare ljspeech`"),
    "serve": ("server.cli", "run the HTTP service"),
    "eval": ("vocoder.evaluation.cli", "copy-synthesis quality evaluation over a folder of clips"),
}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, SIGMA, SIGMA.help)
    add_flag(parser, SEED, "seed for the latent noise")
    add_flag(parser, DENOISE, f"{DENOISE.help}, 0: off")


def _load_model(args: argparse.Namespace):
    from vocoder.inference import Vocoder

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        model = Vocoder.load_or_random(args.checkpoint, args.device)
    return model


def _check_sampling(args: argparse.Namespace) -> None:
    """Refuse bad options and an unwritable output before the model is loaded or run."""
    from vocoder.audio import check_output_path
    from vocoder.inference import check_seed

    check_output_path(args.output)
    check_seed(args.seed)
    SIGMA.check(args.sigma, "--sigma")
    DENOISE.check(args.denoise, "--denoise")


def _load_mel(path: str) -> np.ndarray:
    """A float32 array from a .npy file; its shape and values are the model's to check."""
    try:
        mel = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # an empty file raises EOFError
        raise VocoderError(f"{path}: not a readable .npy mel ({error})") from None
    try:
        return np.asarray(mel, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise VocoderError(f"{path}: expected a numeric mel array, got dtype {mel.dtype} ({error})") from None


def cmd_synth(args: argparse.Namespace) -> int:
    import torch

    from vocoder.audio import write_wav

    _check_sampling(args)
    mel = _load_mel(args.mel)
    model = _load_model(args)
    mel_tensor = model.check_mel(torch.from_numpy(mel))
    if mel_tensor.shape[0] != 1:
        raise VocoderError(f"{args.mel}: expected one mel (n_mels, T), got a batch of {mel_tensor.shape[0]}")
    z = model.sample_latent(mel_tensor.shape[2], seed=args.seed)
    audio = model.infer(mel_tensor, sigma=args.sigma, z=z, denoise=args.denoise, progress=True)
    write_wav(args.output, audio[0].cpu().numpy(), model.sample_rate)
    print(f"wrote {args.output} ({audio.shape[1] / model.sample_rate:.2f} s)")
    return 0


def cmd_resynth(args: argparse.Namespace) -> int:
    from vocoder.audio import load_audio, write_wav

    _check_sampling(args)
    model = _load_model(args)
    audio = load_audio(args.input, model.sample_rate)
    out = model.resynthesize(audio, sigma=args.sigma, seed=args.seed, denoise=args.denoise, progress=True)
    write_wav(args.output, out, model.sample_rate)
    print(f"wrote {args.output} ({out.shape[0] / model.sample_rate:.2f} s)")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from vocoder import latents
    from vocoder.audio import load_audio, write_wav
    from vocoder.mel_transform import check_pitch, check_speed

    _check_sampling(args)
    check_pitch(args.pitch)
    check_speed(args.speed)
    model = _load_model(args)
    if Path(args.input).suffix.lower() == ".npy":
        latent = latents.from_mel(model, _load_mel(args.input), sigma=args.sigma, seed=args.seed)
    else:
        latent = latents.encode(model, load_audio(args.input, model.sample_rate))
        if args.redraw:
            latent = latents.redraw(latent, sigma=args.sigma, seed=args.seed)
    audio = latents.edit_and_decode(model, latent, args.pitch, args.speed, args.denoise)
    write_wav(args.output, audio, model.sample_rate)
    print(f"wrote {args.output} ({audio.shape[0] / model.sample_rate:.2f} s)")
    return 0


def _check_npy_output(path: str) -> Path:
    """Refuse an output name numpy would not write as given: `np.save` appends `.npy` to any
    other name (even `.NPY`), so `-o x.txt` would write `x.txt.npy`. Refusing keeps the
    written and the reported name the same, and a `.npy` file never hides behind another extension."""
    output = Path(path)
    if output.suffix != ".npy":
        raise VocoderError(f"{output}: the mel is written as .npy; give an output name ending in .npy")
    if not output.parent.is_dir():
        raise VocoderError(f"{output}: directory {output.parent} does not exist")
    return output


def cmd_mel(args: argparse.Namespace) -> int:
    import torch

    from vocoder.audio import load_audio
    from vocoder.mel import MelConfig, MelSpectrogram

    output = _check_npy_output(args.output)
    if args.checkpoint:
        from vocoder.checkpoint import read_config

        config = read_config(args.checkpoint)[1]
    else:
        config = MelConfig()
    audio = load_audio(args.input, config.sample_rate)
    if audio.shape[0] < config.min_samples:
        raise VocoderError(f"{args.input}: audio too short ({audio.shape[0]} samples, need {config.min_samples})")
    with torch.inference_mode():
        mel = MelSpectrogram(config)(torch.from_numpy(audio))[0].numpy()
    np.save(output, mel.astype(np.float32))
    print(f"wrote {output} {tuple(mel.shape)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from vocoder.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint_path)
    parameters = sum(t.numel() for t in checkpoint.state_dict.values())
    info = {
        "path": str(args.checkpoint_path),
        "parameters": parameters,
        "model": checkpoint.model.to_dict(),
        "mel": checkpoint.mel.to_dict(),
        "receptive_field_frames": checkpoint.model.receptive_field_frames(),
        "metadata": checkpoint.metadata,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vocoder.nvidia import convert_nvidia_waveglow

    path = convert_nvidia_waveglow(args.input, args.output)
    print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from vocoder.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(args.input)
    path = save_checkpoint(args.output, checkpoint, dtype=torch.float16 if args.fp16 else torch.float32)
    size = (path / "model.safetensors").stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB of weights)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocoder", description="Flow-based neural vocoder")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = commands.add_parser("synth", help="mel (.npy, (n_mels, T)) to audio")
    synth.add_argument("mel", help="log-mel .npy in the model's convention")
    synth.add_argument("-o", "--output", required=True, help="output .wav")
    _add_model_options(synth)
    _add_sampling_options(synth)
    synth.set_defaults(run=cmd_synth)

    resynth = commands.add_parser("resynth", help="copy-synthesis: audio -> mel -> audio")
    resynth.add_argument("input", help="audio file (wav, flac, ogg; any rate)")
    resynth.add_argument("-o", "--output", required=True, help="output .wav")
    _add_model_options(resynth)
    _add_sampling_options(resynth)
    resynth.set_defaults(run=cmd_resynth)

    edit = commands.add_parser("edit", help="change pitch and speed of audio or a .npy mel through the latent")
    edit.add_argument("input", help="audio file (exactly encoded) or log-mel .npy (noise drawn at --sigma)")
    edit.add_argument("-o", "--output", required=True, help="output .wav")
    add_flag(edit, PITCH, PITCH.help)
    add_flag(edit, SPEED, SPEED.help)
    add_flag(edit, REDRAW, "audio input: replace its exact latent by fresh noise at --sigma")
    _add_model_options(edit)
    _add_sampling_options(edit)
    edit.set_defaults(run=cmd_edit)

    mel = commands.add_parser("mel", help="audio to log-mel .npy")
    mel.add_argument("input", help="audio file (wav, flac, ogg; any rate)")
    mel.add_argument("-o", "--output", required=True, help="output .npy, shape (n_mels, T)")
    mel.add_argument("--checkpoint", help="take the mel config from this checkpoint (default: standard)")
    mel.set_defaults(run=cmd_mel)

    info = commands.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint_path", help="checkpoint directory")
    info.set_defaults(run=cmd_info)

    convert = commands.add_parser("convert", help="import a foreign checkpoint")
    kinds = convert.add_subparsers(dest="kind", metavar="KIND", required=True)
    nvidia = kinds.add_parser("nvidia-waveglow", help="NVIDIA's published WaveGlow .pt")
    nvidia.add_argument("input", help="NVIDIA checkpoint (.pt, pickled {'model': WaveGlow})")
    nvidia.add_argument("output", help="output checkpoint directory")
    nvidia.set_defaults(run=cmd_convert)

    export = commands.add_parser("export", help="copy a checkpoint's inference files (no training state)")
    export.add_argument("input", help="checkpoint directory, e.g. a training checkpoint")
    export.add_argument("output", help="output checkpoint directory")
    export.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    export.set_defaults(run=cmd_export)

    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    module = importlib.import_module(DELEGATED[name][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return _delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (VocoderError, OSError) as error:
        print(f"vocoder: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vocoder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

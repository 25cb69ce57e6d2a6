"""CUDA paths: fp32 inference equal to the CPU's, fp16 autocast close to it, mixed-precision
training. Marked `gpu` (run with `python3 -m pytest -m gpu`); without CUDA they fail, never skip."""
from __future__ import annotations

import pytest
import torch

from speech import speech_clip
from test_training import LJ_CLIPS, audio_filelist, write_recipe
from tiny import randomise_end_layers
from training.cli import main as train_main
from vocoder.audio import load_audio
from vocoder.config import preset
from vocoder.inference import Vocoder
from vocoder.pretrained import default_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("restore_torch_globals")]


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError("the gpu tests need a CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.mark.parametrize("name", ["waveglow", "efficient", "source-filter"])
def test_fp32_flow_on_cuda_equals_cpu(cuda, name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = Vocoder.from_config(preset(name), seed=0)
    randomise_end_layers(model.flow, std=0.02)
    model.eval()
    mel = torch.randn(2, 80, 40, generator=torch.Generator().manual_seed(0)) - 5.0
    z = model.sample_latent(40, batch=2, seed=0)
    lengths = torch.tensor([40, 25])
    with torch.inference_mode():
        on_cpu = model.flow.infer(mel, sigma=0.6, lengths=lengths, z=z)
        on_gpu = model.to(cuda).flow.infer(mel.to(cuda), sigma=0.6, lengths=lengths.to(cuda), z=z.to(cuda)).cpu()
    assert (on_cpu - on_gpu).abs().max() < 1e-3
    assert on_gpu[1, 25 * model.hop_length:].abs().max() == 0


def test_source_filter_chunked_stream_on_cuda_equals_whole(cuda):
    model = Vocoder.from_config(preset("source-filter"), seed=0)
    randomise_end_layers(model.flow, std=0.02)
    model = model.to(cuda).eval()
    mel = torch.randn(1, 80, 60, generator=torch.Generator().manual_seed(1)) - 5.0
    z = model.sample_latent(60, seed=1)
    whole = model.infer(mel.to(cuda), z=z, chunk_frames=None)
    chunked = model.infer(mel.to(cuda), z=z, chunk_frames=16)
    assert whole.device.type == "cuda" and torch.isfinite(whole).all()
    assert (whole - chunked).abs().max() < 1e-3


def test_bundled_model_autocast_is_close_to_fp32(cuda):
    path = default_checkpoint()
    assert path is not None, "no bundled checkpoint in vocoder/weights/default"
    model = Vocoder.from_pretrained(path)
    audio = torch.from_numpy(load_audio(speech_clip("ljspeech", "LJ001-0002"), model.sample_rate))[None]
    mel = model.mel_spectrogram(audio)
    z = model.sample_latent(mel.shape[2], seed=0)
    reference = model.infer(mel, z=z)  # CPU, fp32
    gpu_model = Vocoder.from_pretrained(path, device="cuda")
    fast = gpu_model.infer(mel.to(cuda), z=z.to(cuda)).cpu()  # fp16 autocast
    assert torch.isfinite(fast).all()
    difference = (model.mel_spectrogram(fast) - model.mel_spectrogram(reference)).abs().mean()
    assert difference < 0.1, f"fp16 output's log-mel differs from fp32's by {difference:.3f} on average"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(cuda, tmp_path, speech_dir, tiny_recipe, precision):
    clips = audio_filelist(tmp_path, speech_dir, LJ_CLIPS)
    raw = {**tiny_recipe, "data": {"paths": [str(clips)], "val_clips": 1},
           "train": {**tiny_recipe["train"], "device": "cuda", "precision": precision, "deterministic": False,
                     "max_steps": 30, "val_every": 30, "checkpoint_every": 30}}
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    run = tmp_path / "run"
    assert train_main(["--config", str(recipe), "--out", str(run)]) == 0
    model = Vocoder.from_pretrained(run / "checkpoints" / "latest")
    audio = model.infer(torch.zeros(1, 20, 8), z=model.sample_latent(8, seed=0))
    assert torch.isfinite(audio).all()

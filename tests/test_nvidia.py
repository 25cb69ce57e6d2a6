"""NVIDIA WaveGlow checkpoints convert to the same function, and their pickles run nothing.

NVIDIA's own implementation (PyPI `waveglow`) is the reference: random-weight models saved
the way its train.py saves them must give the same latent, log-determinant and audio.
"""
from __future__ import annotations

import os
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from vocoder.checkpoint import load_checkpoint
from vocoder.cli import main
from vocoder.errors import CheckpointError
from vocoder.inference import Vocoder
from vocoder.nvidia import convert_nvidia_waveglow, load_nvidia_waveglow

glow = pytest.importorskip("waveglow.glow", reason="NVIDIA's reference needs `pip install --no-deps waveglow`")
glow_old = pytest.importorskip("waveglow.glow_old")
# NVIDIA's code calls torch APIs that now warn (torch.qr, nn.utils.weight_norm).
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

N_MELS, N_GROUP, N_FLOWS, EARLY_EVERY, EARLY_SIZE = 16, 8, 6, 2, 2
WN_CONFIG = {"n_layers": 3, "n_channels": 32, "kernel_size": 3}
FRAMES, BATCH = 6, 2


def nvidia_waveglow(old_layout: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random-weight NVIDIA WaveGlow whose couplings and weight-norm gains are not trivial."""
    torch.manual_seed(seed)
    model = glow.WaveGlow(N_MELS, N_FLOWS, N_GROUP, EARLY_EVERY, EARLY_SIZE, WN_CONFIG)
    if old_layout:
        for k, wn in enumerate(model.WN):
            model.WN[k] = glow_old.WN(wn.start.weight_v.shape[1], N_MELS * N_GROUP, **WN_CONFIG)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("end.weight", "end.bias")):
                parameter.normal_(std=0.05)  # NVIDIA zero-initialises them: identity couplings
            elif name.endswith("weight_g"):
                parameter.mul_(torch.empty_like(parameter).uniform_(0.5, 1.5))
    return model.eval()


def remove_weight_norm(model: torch.nn.Module, old_layout: bool) -> torch.nn.Module:
    return (glow_old.WaveGlow if old_layout else glow.WaveGlow).remove_weightnorm(model)


def save_like_train_py(model: torch.nn.Module, path: Path, **kwargs) -> Path:
    torch.save({"model": model, "iteration": 580000, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 1e-4}, path, **kwargs)
    return path


@contextmanager
def pickled_as_glow_module():
    """Make the classes pickle as `glow.WaveGlow` etc., the module path of NVIDIA's own files."""
    classes = [glow.WaveGlow, glow.WN, glow.Invertible1x1Conv]
    sys.modules["glow"] = glow
    try:
        for cls in classes:
            cls.__module__ = "glow"
        yield
    finally:
        for cls in classes:
            cls.__module__ = "waveglow.glow"
        del sys.modules["glow"]


def write_variant(variant: str, path: Path) -> torch.nn.Module:
    """Save a model as `variant` and return it (weight norm still on)."""
    model = nvidia_waveglow(old_layout=variant == "old-layout")
    if variant == "glow-module":
        with pickled_as_glow_module():
            save_like_train_py(model, path)
    elif variant == "legacy-format":
        save_like_train_py(model, path, _use_new_zipfile_serialization=False)
    elif variant == "state-dict":
        torch.save({"model": model.state_dict(), "iteration": 1}, path)
    else:
        save_like_train_py(model, path)
    return model


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mel = torch.randn(BATCH, N_MELS, FRAMES, generator=generator)
    audio = 0.3 * torch.randn(BATCH, FRAMES * 256, generator=generator)
    return mel, audio


@pytest.fixture
def nvidia_noise(monkeypatch):
    """Feed NVIDIA's `infer` (which draws torch.cuda.FloatTensor noise) chosen CPU tensors, in order."""
    queue: list[torch.Tensor] = []

    class Noise:
        def __init__(self, *shape: int) -> None:
            self.tensor = queue.pop(0)
            assert tuple(self.tensor.shape) == shape

        def normal_(self) -> torch.Tensor:
            return self.tensor

    monkeypatch.setattr(torch.cuda, "FloatTensor", Noise)
    return queue


@pytest.mark.parametrize("variant", ["new-layout", "glow-module", "legacy-format", "old-layout", "state-dict"])
def test_converted_model_matches_nvidia(variant, tmp_path, nvidia_noise):
    source = tmp_path / "waveglow.pt"
    reference = remove_weight_norm(write_variant(variant, source), variant == "old-layout")
    path = convert_nvidia_waveglow(source, tmp_path / "converted")
    model = Vocoder.from_pretrained(path)
    config = model.flow.config
    assert (config.n_group, config.n_flows, config.n_early_every, config.n_early_size) == (8, 6, 2, 2)
    assert (config.n_layers, config.n_channels, config.n_mels, config.hop_length) == (3, 32, 16, 256)
    assert load_checkpoint(path).metadata["source_file"] == "waveglow.pt"

    mel, audio = inputs()
    with torch.no_grad():
        z_ref, log_s, log_det_w = reference((mel, audio))
        z, log_det = model.flow(audio, mel)
        z_fused, _ = model.fused(audio, mel)  # the inference code path
    assert (z - z_ref).abs().max() < 1e-4 and (z_fused - z_ref).abs().max() < 1e-4
    log_det_ref = sum(s.sum() for s in log_s) + sum(log_det_w)  # NVIDIA sums over the batch
    assert abs(log_det.sum().item() - log_det_ref.item()) < 1e-4
    assert abs(log_det_ref.item()) > 1.0  # the couplings and 1x1 convolutions are not volume-preserving

    noise = torch.randn(BATCH, N_GROUP, FRAMES * 256 // N_GROUP, generator=torch.Generator().manual_seed(2))
    # NVIDIA draws the final channels first, then each early output from the last flow step down.
    nvidia_noise.extend([noise[:, 4:], noise[:, 2:4], noise[:, :2]])
    with torch.no_grad():
        expected = reference.infer(mel, sigma=0.7)
    assert not nvidia_noise
    produced = model.infer(mel, sigma=0.7, z=noise)
    assert (produced - expected).abs().max() < 1e-4
    assert expected.abs().max() > 0.1


def test_cli_converts(tmp_path, capsys):
    source = tmp_path / "waveglow_256channels.pt"
    write_variant("glow-module", source)
    assert main(["convert", "nvidia-waveglow", str(source), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    metadata = load_checkpoint(tmp_path / "out").metadata
    assert metadata["source"] == "converted from NVIDIA WaveGlow"
    assert metadata["source_file"] == "waveglow_256channels.pt" and metadata["iteration"] == 580000


class RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"model": RunsACommand(f"touch {marker}")}, zipped)
    with pytest.raises(CheckpointError, match=r"refused to unpickle global (os|posix)\.system"):
        load_nvidia_waveglow(zipped)

    # A bare pickle is read as torch's legacy format, whose first record goes through the same gate.
    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickle.dumps(RunsACommand(f"touch {marker}"), protocol=2))
    assert main(["convert", "nvidia-waveglow", str(bare), str(tmp_path / "out")]) == 2
    assert "refused to unpickle global" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


class NotWaveGlow(torch.nn.Module):
    pass


def test_unknown_class_and_glow_old_model_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": NotWaveGlow()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle global .*NotWaveGlow"):
        load_nvidia_waveglow(path)

    torch.manual_seed(0)
    old = glow_old.WaveGlow(N_MELS, 4, N_GROUP, 4, 2, WN_CONFIG)
    save_like_train_py(old, path)
    with pytest.raises(CheckpointError, match="swaps the coupling halves"):
        load_nvidia_waveglow(path)


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_nvidia_waveglow(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_nvidia_waveglow(junk)

"""Checkpoints round-trip exactly and refuse configs that do not fit the weights."""
import json

import pytest
import torch

from tiny import TINY_CONFIGS
from test_inference import tiny_vocoder
from vocoder.config import PRESETS
from vocoder.checkpoint import CONFIG_FILE, load_checkpoint, read_config
from vocoder.errors import CheckpointError
from vocoder.inference import Vocoder


@pytest.mark.parametrize("name", ["waveglow", "source-filter"])
def test_round_trip_is_exact(tmp_path, name):
    model = tiny_vocoder(name)
    if model.flow.pitch is not None:
        model.flow.pitch.fitted.fill_(True)  # a buffer, not a parameter: it must travel too
    model.save_pretrained(tmp_path / "ckpt", metadata={"note": "test"})
    loaded = Vocoder.from_pretrained(tmp_path / "ckpt")
    for key, value in model.flow.state_dict().items():
        assert torch.equal(value, loaded.flow.state_dict()[key])
    assert loaded.mel.config == model.mel.config
    assert loaded.metadata["note"] == "test"
    mel = torch.randn(1, 6, 12) - 5
    z = model.sample_latent(12, seed=0)
    assert torch.equal(model.infer(mel, z=z), loaded.infer(mel, z=z))


def test_fp16_storage_halves_size(tmp_path):
    model = Vocoder.from_config(PRESETS["efficient-small"], seed=0)
    full = model.save_pretrained(tmp_path / "fp32") / "model.safetensors"
    half = model.save_pretrained(tmp_path / "fp16", dtype=torch.float16) / "model.safetensors"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert load_checkpoint(tmp_path / "fp16").state_dict["WN.0.start.weight"].dtype == torch.float32


def test_mismatched_config_fails_loudly(tmp_path):
    tiny_vocoder("efficient").save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model"]["n_channels"] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights do not fit the config.*shape mismatches"):
        Vocoder.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format_version=99), "format version 99"),
    (lambda c: c["model"].update(colour="red"), "unknown flow config keys"),
    (lambda c: c.pop("mel"), "missing section 'mel'"),
    (lambda c: c["mel"].update(n_mels=40), "model expects 6 mels"),
])
def test_bad_config_json_is_named(tmp_path, edit, message):
    tiny_vocoder("efficient").save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path / "ckpt")


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        Vocoder.from_pretrained(tmp_path / "nothing")


def test_tiny_configs_are_valid():
    assert all(config.receptive_field_frames() > 0 for config in TINY_CONFIGS.values())

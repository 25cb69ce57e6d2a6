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
    (lambda c: c["model"].update(colour="red"), "unknown config key 'model.colour'"),
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


def _saved(tmp_path, name="efficient"):
    return tiny_vocoder(name).save_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"", "model.safetensors: not a readable safetensors file"),
    (lambda data: data[: len(data) // 2], "model.safetensors: not a readable safetensors file"),
    (lambda data: b"\x00garbage" * 100, "model.safetensors: not a readable safetensors file"),
])
def test_damaged_weights_are_a_checkpoint_error(tmp_path, damage, message):
    weights = _saved(tmp_path) / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("text, message", [
    (b"[1, 2]", "expected a JSON object, got list"),
    (b"null", "expected a JSON object, got NoneType"),
    (b'"model"', "expected a JSON object, got str"),
    (b'{"format_version": 1, "model": {}, "mel": {}}\xff', "not valid UTF-8 JSON"),
])
def test_config_json_that_is_not_an_object_is_named(tmp_path, text, message):
    (_saved(tmp_path) / CONFIG_FILE).write_bytes(text)
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path / "ckpt")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(n_flows=12.5), "'model.n_flows' must be an integer, got 12.5"),
    (lambda c: c["model"].update(shift_groups=1), "'model.shift_groups' must be true or false, got 1"),
    (lambda c: c["mel"].update(sample_rate="22050"), "'mel.sample_rate' must be an integer, got '22050'"),
    (lambda c: c.update(model=None), "config section 'model' must be a mapping, got None"),
    (lambda c: c.update(metadata=[1]), "metadata must be a JSON object, got list"),
])
def test_config_values_of_the_wrong_type_are_named(tmp_path, edit, message):
    config_path = _saved(tmp_path) / CONFIG_FILE
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["waveglow", "source-filter"])
def test_absurd_sizes_fail_before_any_allocation(tmp_path, monkeypatch, name):
    config_path = _saved(tmp_path, name) / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model"]["n_channels"] = 10**7  # ~38 GB of float32 weights
    config_path.write_text(json.dumps(config))
    # Building the real flow would allocate the 38 GB: the config must be refused before that.
    monkeypatch.setattr("vocoder.inference.WaveFlow", lambda *args: pytest.fail("a full-size flow was built"))
    for load in (load_checkpoint, Vocoder.from_pretrained):
        with pytest.raises(CheckpointError, match=r"ckpt: weights do not fit the config.*shape mismatches"):
            load(tmp_path / "ckpt")

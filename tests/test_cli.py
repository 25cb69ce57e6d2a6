"""The `vocoder` command line on a real clip, and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from speech import speech_clip
from tiny import randomise_end_layers
from vocoder.cli import main
from vocoder.config import FlowConfig
from vocoder.inference import Vocoder

SMALL_REAL_RATE = FlowConfig(n_group=256, n_flows=2, n_early_every=4, n_layers=2, n_channels=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = Vocoder.from_config(SMALL_REAL_RATE, seed=0)
    randomise_end_layers(model.flow)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_mel_synth_resynth_info(tmp_path, checkpoint, capsys):
    clip = speech_clip()
    mel_path, synth_path, resynth_path = tmp_path / "m.npy", tmp_path / "s.wav", tmp_path / "r.wav"
    assert main(["mel", str(clip), "-o", str(mel_path)]) == 0
    mel = np.load(mel_path)
    assert mel.shape[0] == 80 and mel.dtype == np.float32

    assert main(["synth", str(mel_path), "-o", str(synth_path), "--checkpoint", str(checkpoint),
                 "--seed", "1", "--denoise", "0.1"]) == 0
    audio, rate = soundfile.read(synth_path)
    assert rate == 22050 and audio.shape[0] == mel.shape[1] * 256

    assert main(["resynth", str(clip), "-o", str(resynth_path), "--checkpoint", str(checkpoint),
                 "--sigma", "0.5"]) == 0
    source = soundfile.info(clip)
    assert abs(soundfile.info(resynth_path).frames - source.frames * 22050 / source.samplerate) <= 2

    capsys.readouterr()
    assert main(["info", str(checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["n_group"] == 256 and info["mel"]["sample_rate"] == 22050


@pytest.mark.parametrize("argv, message", [
    (["resynth", "/nonexistent.wav", "-o", "x.wav"], "no such file"),
    (["synth", "/nonexistent.npy", "-o", "x.wav"], "not a readable .npy mel"),
    (["info", "/nonexistent"], "not a checkpoint directory"),
    (["resynth", "IN", "-o", "x.wav", "--sigma", "3"], "--sigma must be within 0-1.5"),
    (["resynth", str(speech_clip()), "-o", "x.wav", "--device", "gpu7"], "unknown device 'gpu7'"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_mel_bands_one_line(tmp_path, checkpoint, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((40, 10), dtype=np.float32))
    assert main(["synth", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "x.wav"),
                 "--checkpoint", str(checkpoint)]) == 2
    assert "mel has 40 bands, model expects 80" in capsys.readouterr().err


def test_a_db_mel_is_refused_in_one_line(tmp_path, checkpoint, capsys):
    np.save(tmp_path / "db.npy", np.linspace(-80.0, 0.0, 800, dtype=np.float32).reshape(80, 10))
    assert main(["synth", str(tmp_path / "db.npy"), "-o", str(tmp_path / "x.wav"),
                 "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "natural log of a magnitude mel" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


def test_console_script_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "vocoder", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "resynth" in result.stdout


def test_core_never_imports_server_or_training():
    code = ("import sys, vocoder, vocoder.cli, vocoder.inference; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('server', 'training', 'fastapi')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_export_fp16_checkpoint_loads(tmp_path, checkpoint):
    assert main(["export", str(checkpoint), str(tmp_path / "small"), "--fp16"]) == 0
    original = Vocoder.from_pretrained(checkpoint)
    exported = Vocoder.from_pretrained(tmp_path / "small")
    for key, value in original.flow.state_dict().items():
        assert (exported.flow.state_dict()[key] - value).abs().max() <= 1e-3 * (1 + value.abs().max())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("output, message", [
    ("x.mp3", "cannot write 16-bit audio with extension '.mp3'"),
    ("x.ogg", "cannot write 16-bit audio with extension '.ogg'"),
    ("x.exe", "cannot write 16-bit audio with extension '.exe'"),
    ("x", "cannot write 16-bit audio with no extension"),
    ("missing/x.wav", "does not exist"),
    (".", "is a directory"),
])
@pytest.mark.parametrize("command", ["synth", "resynth", "edit"])
def test_unwritable_output_is_refused_before_synthesis(tmp_path, monkeypatch, capsys, command, output, message):
    monkeypatch.setattr("vocoder.cli._load_model", lambda args: pytest.fail("the model was loaded"))
    np.save(tmp_path / "m.npy", np.full((80, 10), -5.0, dtype=np.float32))
    source = str(tmp_path / "m.npy") if command != "resynth" else str(speech_clip())
    assert main([command, source, "-o", str(tmp_path / output)]) == 2
    assert message in _one_line_error(capsys)


@pytest.mark.parametrize("seed", [str(2**70), str(2**63), "-1"])
@pytest.mark.parametrize("command", ["synth", "resynth", "edit"])
def test_out_of_range_seed_is_one_line(tmp_path, capsys, command, seed):
    np.save(tmp_path / "m.npy", np.full((80, 10), -5.0, dtype=np.float32))
    source = str(tmp_path / "m.npy") if command != "resynth" else str(speech_clip())
    assert main([command, source, "-o", str(tmp_path / "x.wav"), "--seed", seed]) == 2
    assert f"seed must be within 0-{2**63 - 1}" in _one_line_error(capsys)


@pytest.mark.parametrize("array, message", [
    (None, "not a readable .npy mel"),  # a zero-byte file
    (np.zeros((0,), dtype=np.float32), "mel must have shape"),
    (np.zeros((80, 0), dtype=np.float32), "mel has no frames"),
    (np.zeros((0, 80, 10), dtype=np.float32), "mel batch is empty"),
    (np.array(["a", "b"]), "expected a numeric mel array"),
])
@pytest.mark.parametrize("command", ["synth", "edit"])
def test_empty_or_non_numeric_npy_is_one_line(tmp_path, checkpoint, capsys, command, array, message):
    path = tmp_path / "m.npy"
    if array is None:
        path.write_bytes(b"")
    else:
        np.save(path, array)
    assert main([command, str(path), "-o", str(tmp_path / "x.wav"), "--checkpoint", str(checkpoint)]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("command", ["synth", "edit"])
def test_denoising_a_one_frame_mel_is_one_line(tmp_path, checkpoint, capsys, command):
    np.save(tmp_path / "m.npy", np.full((80, 1), -5.0, dtype=np.float32))
    assert main([command, str(tmp_path / "m.npy"), "-o", str(tmp_path / "x.wav"), "--checkpoint", str(checkpoint),
                 "--denoise", "0.1"]) == 2
    assert "denoising needs at least 513 samples of audio, got 256" in _one_line_error(capsys)


@pytest.mark.parametrize("output, message", [
    ("x.txt", "give an output name ending in .npy"),
    ("x.NPY", "give an output name ending in .npy"),
    ("x", "give an output name ending in .npy"),
    ("missing/x.npy", "does not exist"),
])
def test_mel_output_name_is_what_gets_written(tmp_path, capsys, output, message):
    assert main(["mel", str(speech_clip()), "-o", str(tmp_path / output)]) == 2
    assert message in _one_line_error(capsys)
    assert not list(tmp_path.rglob("*"))


@pytest.mark.parametrize("command", ["info", "synth"])
@pytest.mark.parametrize("config_text, message", [
    ('[1]', "expected a JSON object, got list"),
    (None, "model.safetensors: not a readable safetensors file"),
])
def test_broken_checkpoint_is_one_line(tmp_path, checkpoint, capsys, command, config_text, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((checkpoint / name).read_bytes())
    if config_text is None:
        (broken / "model.safetensors").write_bytes(b"")
    else:
        (broken / "config.json").write_text(config_text)
    np.save(tmp_path / "m.npy", np.full((80, 10), -5.0, dtype=np.float32))
    argv = (["info", str(broken)] if command == "info" else
            ["synth", str(tmp_path / "m.npy"), "-o", str(tmp_path / "x.wav"), "--checkpoint", str(broken)])
    assert main(argv) == 2
    assert message in _one_line_error(capsys)

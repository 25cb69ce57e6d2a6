"""Exact resume: a run stopped at step k and resumed matches an unbroken run bit for bit,
whatever the DataLoader workers; a SIGTERM leaves a checkpoint to resume from."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.config import config_from_dict
from training.state import STATE_TENSORS, find_resume_dir, step_dirs
from training.pitch_fit import fit_pitch_predictor
from training.trainer import Trainer, resolve_model
from vocoder.pitch import align_phase

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

STOP, EXTRA = 7, 10


def losses(run: Path) -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == "train"}


def recipe(tiny_recipe: dict, speech_dir: Path, out: Path, workers: int = 0) -> dict:
    # Auxiliary losses on, so the restored RNG state matters; a cosine schedule with warmup,
    # so the restored step matters; validation and checkpoints in between.
    return {**tiny_recipe, "data": {"paths": [str(speech_dir / "ljspeech")], "val_clips": 2},
            "loss": {**tiny_recipe["loss"], "stft_weight": 1.0, "mel_weight": 1.0},
            "train": {**tiny_recipe["train"], "max_steps": STOP + EXTRA, "val_every": 5, "checkpoint_every": 5,
                      "num_workers": workers},
            "out_dir": str(out)}


def test_resume_is_bit_exact(tmp_path, speech_dir, tiny_recipe):
    whole = tmp_path / "whole"
    Trainer(resolve_model(config_from_dict(recipe(tiny_recipe, speech_dir, whole)), None)).fit()

    broken = tmp_path / "broken"
    first = Trainer(resolve_model(config_from_dict(recipe(tiny_recipe, speech_dir, broken)), None))
    result = first.fit(stop_at=STOP)
    assert result.stopped and result.step == STOP
    # Scramble every RNG the resumed run must restore.
    torch.manual_seed(99)
    # The resumed half loads its clips through worker processes: positions, not workers, fix the data.
    resumed_config = resolve_model(config_from_dict(recipe(tiny_recipe, speech_dir, broken, workers=2)), None)
    resume_dir = find_resume_dir(broken)
    assert resume_dir.name == f"step-{STOP:08d}"
    Trainer(resumed_config, resume=resume_dir).fit()

    expected, got = losses(whole), losses(broken)
    assert sorted(got) == list(range(1, STOP + EXTRA + 1))
    for step in range(STOP + 1, STOP + EXTRA + 1):
        for key in ("loss", "nll", "stft", "mel", "grad_norm", "lr"):
            assert got[step][key] == expected[step][key], (step, key)
    final = f"checkpoints/step-{STOP + EXTRA:08d}/{STATE_TENSORS}"
    a, b = load_file(str(whole / final)), load_file(str(broken / final))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optimizer.")))


def test_sigterm_checkpoints_then_resume_finishes(tmp_path, speech_dir, tiny_recipe):
    raw = recipe(tiny_recipe, speech_dir, tmp_path / "run")
    raw["train"] = {**raw["train"], "max_steps": 100000, "checkpoint_every": 100000, "val_every": 100000}
    config_path = tmp_path / "r.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "vocoder.cli", "train", "--config", str(config_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert "stopped (signal SIGTERM)" in output
    (step, directory), = step_dirs(tmp_path / "run" / "checkpoints")
    assert step >= 3 and max(losses(tmp_path / "run")) == step

    finish = subprocess.run([*command[:4], "--resume", str(tmp_path / "run"), f"train.max_steps={step + 2}"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert finish.returncode == 0, finish.stderr
    assert max(losses(tmp_path / "run")) == step + 2


@pytest.mark.parametrize("pitch_phase", ["predicted", "aligned"])
def test_source_filter_fits_its_pitch_predictor_once_and_resumes(tmp_path, speech_dir, tiny_recipe, monkeypatch,
                                                                 pitch_phase):
    import training.losses
    import training.vocoder_task
    from test_training import LJ_CLIPS, audio_filelist

    fits, alignments = [], []

    def short_fit(predictor, store, mel, seed, labels=None):
        fits.append(len(store))
        return fit_pitch_predictor(predictor, store, mel, seed, steps=20, labels=labels)

    def counted_align_phase(track, signal, hop, sample_rate):
        alignments.append(signal.shape)
        return align_phase(track, signal, hop, sample_rate)

    monkeypatch.setattr(training.vocoder_task, "fit_pitch_predictor", short_fit)
    monkeypatch.setattr(training.losses, "align_phase", counted_align_phase)
    out = tmp_path / "run"
    raw = {**recipe(tiny_recipe, speech_dir, out),
           "loss": {**tiny_recipe["loss"], "pitch_phase": pitch_phase},
           "data": {"paths": [str(audio_filelist(tmp_path, speech_dir, LJ_CLIPS))], "val_clips": 1},
           "model": {**tiny_recipe["model"], "family": "source-filter", "shift_groups": True, "lpc_order": 8,
                     "gain_channels": 4, "pitch_harmonics": 2, "pitch_channels": 4}}
    result = Trainer(resolve_model(config_from_dict(raw), None)).fit(stop_at=STOP)
    assert result.step == STOP and fits == [len(LJ_CLIPS) - 1]
    Trainer(resolve_model(config_from_dict(raw), None), resume=find_resume_dir(out)).fit()
    assert fits == [len(LJ_CLIPS) - 1]  # the resumed run found the predictor fitted
    weights = load_file(str(out / f"checkpoints/step-{STOP + EXTRA:08d}/model.safetensors"))
    assert weights["pitch.fitted"].item() == 1
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses(out).values())
    # Aligned training conditions every step on the recording's own phase; the default never.
    assert len(alignments) == (STOP + EXTRA if pitch_phase == "aligned" else 0)

"""The trainer on real speech with a tiny flow: config parsing and errors, loss falling,
checkpoints (atomic, keep-last-K, loadable), the non-finite guard, held-out clips, --init."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import soundfile
import torch
import yaml

from training.cli import main
from training.config import ConfigError, config_from_dict, load_config
from training.data import split_clips
from training.state import commit_checkpoint, step_dirs
from training.trainer import Trainer, TrainingError, resolve_model
from vocoder.checkpoint import load_checkpoint
from vocoder.config import FlowConfig, preset
from vocoder.errors import CheckpointError
from vocoder.inference import Vocoder

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

LJ_CLIPS = [f"LJ001-{n:04d}" for n in range(1, 7)]


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def records(run: Path, kind: str = "train") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def audio_filelist(tmp_path: Path, speech_dir: Path, ids: list[str]) -> Path:
    path = tmp_path / "clips.txt"
    path.write_text("".join(f"{speech_dir / 'ljspeech' / i}.flac\n" for i in ids))
    return path


def build(raw: dict) -> Trainer:
    return Trainer(resolve_model(config_from_dict(raw), None))


# -- configuration -----------------------------------------------------------------------
def test_overrides_are_typed_and_refine_presets(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"model": "efficient", "optim": {"lr": "1e-4"}})
    config = load_config(recipe, ["model.n_flows=8", "train.max_steps=7", "optim.lr=3e-4",
                                  "loss.stft_resolutions=[[64, 16, 64]]", "data.cache_audio=false"])
    assert config.model == preset("efficient").updated(n_flows=8)
    assert config.train.max_steps == 7 and config.optim.lr == pytest.approx(3e-4)
    assert config.loss.stft_resolutions == [[64, 16, 64]] and config.data.cache_audio is False
    assert load_config(recipe, ["model=efficient-small"]).model == preset("efficient-small")
    assert load_config(None).model is None  # left to --init or the defaults


@pytest.mark.parametrize("override, message", [
    ("train.max_step=5", "unknown config key 'train.max_step' (did you mean 'max_steps'?)"),
    ("trian.max_steps=5", "unknown config key 'trian'"),
    ("model.n_flow=3", "unknown config key 'model.n_flow'"),
    ("train.batch_size=many", "'train.batch_size' must be an integer"),
    ("train.precision=fp64", "'train.precision' must be one of"),
    ("model.pitch_predictor=crepe", "'model.pitch_predictor' must be one of"),
    ("model=tiny", "unknown model preset 'tiny'"),
    ("train.max_steps", "must look like section.key=value"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    recipe = write_recipe(tmp_path / "r.yaml", {"model": "efficient"})
    with pytest.raises(ConfigError) as error:
        load_config(recipe, [override])
    assert message in str(error.value)
    assert main(["--config", str(recipe), "--print-config", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "config key 'train.max_steps' must be positive, got 0"),
    ("data.val_clips=-1", "config key 'data.val_clips' must not be negative, got -1"),
    ("optim.betas=[0.9]", "config key 'optim.betas' must be two numbers in [0, 1), got [0.9]"),
    ("loss.stft_resolutions=[[64, 16, 128]]", "config key 'loss.stft_resolutions[0]' must be [n_fft, hop, win]"),
])
def test_each_section_checks_its_own_ranges(tmp_path, override, message):
    recipe = write_recipe(tmp_path / "r.yaml", {"model": "efficient"})
    with pytest.raises(ConfigError) as error:
        load_config(recipe, [override])
    assert message in str(error.value)
    # The check is the section's own, so a section built in code is held to it too.
    section, _, key_value = override.partition(".")
    key, _, value = key_value.partition("=")
    cls = type(getattr(load_config(recipe), section))
    with pytest.raises(ValueError, match=re.escape(message.split("' ", 1)[1])):
        cls(**{key: yaml.safe_load(value)})


def test_recipes_and_checkpoints_share_one_loader(tmp_path):
    """A config.json's model section and a recipe's are read by the same loader, so the same
    mistake reads the same; only YAML's forms (`1e-4` is a string to YAML 1.1) are recipe-only."""
    path = Vocoder.from_config(preset("efficient-small"), seed=0).save_pretrained(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    message = "unknown config key 'model.n_flow' (did you mean 'n_flows'?)"
    (path / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "n_flow": 3}}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"model": {"n_flow": 3}})

    assert config_from_dict({"mel": {"fmin": "1e-4"}}).mel.fmin == 1e-4
    (path / "config.json").write_text(json.dumps({**config, "mel": {**config["mel"], "fmin": "1e-4"}}))
    with pytest.raises(CheckpointError, match="config key 'mel.fmin' must be a number, got '1e-4'"):
        load_checkpoint(path)


def test_model_dependent_checks(tiny_recipe):
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "segment_length": 2050}}
    with pytest.raises(ConfigError, match="multiple of the model's n_group 16"):
        resolve_model(config_from_dict(raw), None)
    raw = {**tiny_recipe, "mel": {}}
    with pytest.raises(ConfigError, match="model expects 20 mels / hop 64"):
        resolve_model(config_from_dict(raw), None)
    raw = {**tiny_recipe, "loss": {**tiny_recipe["loss"], "pitch_phase": "aligned"}}
    with pytest.raises(ConfigError, match="pitch_phase=aligned needs a source-filter model with pitch"):
        resolve_model(config_from_dict(raw), None)


def test_print_config_resolves_paths_and_model(tmp_path, capsys, tiny_recipe, speech_dir):
    # The data is reached through a symlinked ancestor, as when ../shared is a link, so every
    # run checks that the printed path is the fully resolved one, not the one given.
    shared_link = tmp_path / "shared"
    shared_link.symlink_to(speech_dir.parents[1], target_is_directory=True)
    linked_speech = shared_link / speech_dir.relative_to(speech_dir.parents[1])
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    assert main(["--config", str(recipe), "--data", str(linked_speech), "--out", "rel/run", "--print-config",
                 "train.seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["seed"] == 7 and printed["model"]["n_group"] == 16
    assert printed["data"]["paths"] == [str(speech_dir.resolve())] and Path(printed["out_dir"]).is_absolute()


# -- data --------------------------------------------------------------------------------
def test_held_out_clips_never_trained_on(tmp_path, speech_dir, tiny_recipe, capsys):
    train, val = split_clips(config_from_dict({"data": {"paths": [str(speech_dir)], "val_clips": 4}}).data)
    ids = {c.clip_id for c in train} | {c.clip_id for c in val}
    assert not ids & {f"LJ001-{n:04d}" for n in range(25, 33)}
    assert len(val) == 4 and not {c.path for c in train} & {c.path for c in val}
    assert {c.source for c in train} == {p.name for p in speech_dir.iterdir() if (p / "metadata.csv").is_file()}

    filelist = tmp_path / "train.txt"
    filelist.write_text("LJ001-0001\nLJ001-0027\n")
    raw = {**tiny_recipe, "data": {"train_filelist": str(filelist)}}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["--config", str(recipe), "--data", str(speech_dir / "ljspeech"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "held-out evaluation clips LJ001-0027" in err and "Traceback" not in err


def test_ljspeech_layout_with_id_filelists(tmp_path, speech_dir):
    dataset = tmp_path / "LJSpeech-1.1"
    (dataset / "wavs").mkdir(parents=True)
    for clip_id in LJ_CLIPS:
        audio, rate = soundfile.read(speech_dir / "ljspeech" / f"{clip_id}.flac")
        soundfile.write(dataset / "wavs" / f"{clip_id}.wav", audio[:4000], rate)
    (dataset / "metadata.csv").write_text("".join(f"{i}|text|text\n" for i in LJ_CLIPS))
    (tmp_path / "train.txt").write_text("\n".join(LJ_CLIPS[:4]) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(LJ_CLIPS[4:]) + "\n")
    data = config_from_dict({"data": {"paths": [str(dataset)], "train_filelist": str(tmp_path / "train.txt"),
                                      "val_filelist": str(tmp_path / "val.txt"), "val_clips": 1}}).data
    train, val = split_clips(data)
    assert [c.clip_id for c in train] == LJ_CLIPS[:4] and [c.clip_id for c in val] == LJ_CLIPS[4:5]
    assert all(c.path.parent == dataset / "wavs" and c.path.suffix == ".wav" for c in train + val)


# -- training ----------------------------------------------------------------------------
def test_loss_falls_and_checkpoints_are_valid(tmp_path, speech_dir, tiny_recipe):
    raw = {**tiny_recipe, "data": {"paths": [str(audio_filelist(tmp_path, speech_dir, LJ_CLIPS))], "val_clips": 1},
           "loss": {}, "train": {**tiny_recipe["train"], "max_steps": 40, "checkpoint_every": 10, "val_every": 20}}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    run = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(run)]) == 0

    nll = [r["nll"] for r in records(run)]
    assert len(nll) == 40
    assert sum(nll[-5:]) / 5 < sum(nll[:5]) / 5 - 0.2, nll
    assert all(r["sigma"] == 1.0 and r["throughput"] > 0 and "grad_norm" in r for r in records(run))
    assert [r["step"] for r in records(run, "val")] == [20, 40]

    checkpoints = run / "checkpoints"
    assert [step for step, _ in step_dirs(checkpoints)] == [30, 40]  # keep_last 2
    assert (checkpoints / "latest").resolve() == (checkpoints / "step-00000040").resolve()
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]
    final = checkpoints / "step-00000040"
    checkpoint = load_checkpoint(final)
    assert not [k for k in checkpoint.state_dict if "parametrizations" in k]  # exported plain
    assert checkpoint.metadata["step"] == 40 and checkpoint.metadata["train_config"]["train"]["max_steps"] == 40
    model = Vocoder.from_pretrained(final)
    audio = model.infer(torch.zeros(1, 20, 8), z=model.sample_latent(8, seed=0))
    assert audio.shape == (1, 8 * 64) and torch.isfinite(audio).all()

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"audio": 0, "images": 0})
    accumulator.Reload()
    assert any(t.endswith("_generated") for t in accumulator.Tags()["audio"])
    assert "train/nll" in accumulator.Tags()["scalars"] and "val/nll" in accumulator.Tags()["scalars"]


def test_checkpoint_commit_is_atomic(tmp_path):
    def fill(directory: Path) -> None:
        (directory / "training_state.json").write_text("{}")

    def broken(directory: Path) -> None:
        (directory / "training_state.json").write_text("{}")
        raise OSError("disk full")

    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        commit_checkpoint(checkpoints, step, fill, keep_last=2)
    with pytest.raises(OSError, match="disk full"):
        commit_checkpoint(checkpoints, 4, broken, keep_last=2)
    assert [step for step, _ in step_dirs(checkpoints)] == [2, 3]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000002", "step-00000003"]


def test_non_finite_steps_are_skipped_then_abort(tmp_path, speech_dir, tiny_recipe, monkeypatch):
    raw = {**tiny_recipe, "data": {"paths": [str(audio_filelist(tmp_path, speech_dir, LJ_CLIPS))], "val_clips": 0},
           "out_dir": str(tmp_path / "run"),
           "train": {**tiny_recipe["train"], "max_steps": 8, "max_bad_steps": 3, "val_every": 100}}
    trainer = build(raw)
    poisoned = {3, 4}
    snapshots = {}
    original = trainer.objective.forward

    def forward(audio, lengths):
        step = trainer.progress.step + 1
        snapshots[step] = [p.detach().clone() for p in trainer.parameters]
        terms = original(audio, lengths)
        if step in poisoned:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.objective, "forward", forward)
    result = trainer.fit()
    assert result.step == 8 and not result.stopped
    assert trainer.progress.skipped_steps == 2
    # A skipped step leaves the weights as they were; the next good one moves them.
    assert all(torch.equal(a, b) for a, b in zip(snapshots[4], snapshots[5]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[5], snapshots[6]))
    assert [r["step"] for r in records(tmp_path / "run")] == list(range(1, 9))

    raw["out_dir"] = str(tmp_path / "run2")
    trainer = build(raw)
    original = trainer.objective.forward
    monkeypatch.setattr(trainer.objective, "forward",
                        lambda a, l: {**original(a, l), "loss": torch.tensor(float("inf"), requires_grad=True)})
    with pytest.raises(TrainingError, match="3 consecutive steps with non-finite loss"):
        trainer.fit()


def test_init_from_checkpoint(tmp_path, speech_dir, tiny_recipe, capsys):
    model_config = FlowConfig.from_dict(tiny_recipe["model"])
    source = Vocoder.from_config(model_config, config_from_dict(tiny_recipe).mel, seed=3)
    init = source.save_pretrained(tmp_path / "init")
    data = str(audio_filelist(tmp_path, speech_dir, LJ_CLIPS))
    without_model = {k: v for k, v in tiny_recipe.items() if k not in ("model", "mel")}
    without_model["train"] = {**tiny_recipe["train"], "max_steps": 1, "val_every": 100}
    without_model["optim"] = {"lr": 1e-9}
    recipe = write_recipe(tmp_path / "r.yaml", without_model)
    run = tmp_path / "run"
    assert main(["--config", str(recipe), "--data", data, "--out", str(run), "--init", str(init)]) == 0
    trained = load_checkpoint(run / "checkpoints" / "step-00000001")
    assert trained.model == model_config and trained.metadata["init"] == str(init)
    for key, value in source.flow.plain_state_dict().items():
        assert torch.allclose(trained.state_dict[key], value, atol=1e-5), key

    mismatched = write_recipe(tmp_path / "m.yaml", {**without_model, "model": {**tiny_recipe["model"], "n_flows": 2},
                                                     "mel": tiny_recipe["mel"]})
    assert main(["--config", str(mismatched), "--data", data, "--out", str(tmp_path / "r2"), "--init", str(init)]) == 2
    assert "n_flows: recipe 2 vs checkpoint 4" in capsys.readouterr().err


def test_init_adapts_to_another_pitch_predictor_and_more_voiced_harmonics(tmp_path, speech_dir, tiny_recipe,
                                                                          monkeypatch, capsys):
    import training.vocoder_task
    from training.pitch_fit import fit_pitch_predictor

    fitted_kinds = []

    def short_fit(predictor, store, mel, seed, labels=None):
        fitted_kinds.append(type(predictor).__name__)
        return fit_pitch_predictor(predictor, store, mel, seed, steps=2, labels=labels)

    monkeypatch.setattr(training.vocoder_task, "fit_pitch_predictor", short_fit)
    source_filter = {**tiny_recipe["model"], "family": "source-filter", "shift_groups": True, "lpc_order": 8,
                     "gain_channels": 4, "pitch_harmonics": 2, "pitch_channels": 4}
    mel_config = config_from_dict(tiny_recipe).mel
    source = Vocoder.from_config(FlowConfig.from_dict({**source_filter, "pitch_predictor": "regression",
                                                       "voiced_harmonics": 2}), mel_config, seed=3)
    amplitudes = source.flow.source_filter.voiced_net[2]
    with torch.no_grad():  # it starts at zero; the test must see where each harmonic's row goes
        amplitudes.weight.normal_()
        amplitudes.bias.normal_()
    init = source.save_pretrained(tmp_path / "init")
    data = str(audio_filelist(tmp_path, speech_dir, LJ_CLIPS))
    raw = {**tiny_recipe, "model": {**source_filter, "pitch_predictor": "classifier", "voiced_harmonics": 3},
           "train": {**tiny_recipe["train"], "max_steps": 1, "val_every": 100}, "optim": {"lr": 1e-9}}
    run = tmp_path / "run"
    assert main(["--config", str(write_recipe(tmp_path / "r.yaml", raw)), "--data", data, "--out", str(run),
                 "--init", str(init)]) == 0
    assert fitted_kinds == ["PitchClassifier"]
    trained = load_checkpoint(run / "checkpoints" / "step-00000001")
    assert trained.model.pitch_predictor == "classifier" and trained.state_dict["pitch.fitted"].item()
    kept = {k: v for k, v in source.flow.plain_state_dict().items()
            if not k.startswith(("pitch.", "source_filter.voiced_net.2."))}
    assert kept and all(torch.allclose(trained.state_dict[k], v, atol=1e-5) for k, v in kept.items())
    for name in ("weight", "bias"):
        old, grown = getattr(amplitudes, name).detach(), trained.state_dict[f"source_filter.voiced_net.2.{name}"]
        # Rows: sines of harmonics 1-3, then cosines; harmonic 3's start at 0.
        assert torch.allclose(grown[[0, 1, 3, 4]], old, atol=1e-5)
        assert grown[[2, 5]].abs().max() < 1e-5

    # Any other difference is still refused.
    other = {**raw, "model": {**raw["model"], "n_flows": 2}}
    assert main(["--config", str(write_recipe(tmp_path / "o.yaml", other)), "--data", data,
                 "--out", str(tmp_path / "r2"), "--init", str(init)]) == 2
    assert "n_flows: recipe 2 vs checkpoint 4" in capsys.readouterr().err

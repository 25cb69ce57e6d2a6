"""The trainer's acoustic task (`task: acoustic`) on real speech with a tiny text-to-mel flow:
through the CLI the loss falls, checkpoints load as text-to-mel models and serve through the
text front-end, a resumed run matches an unbroken one bit for bit, and held-out or
untranscribed clips are never trained on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import load_file

from training.cli import main
from training.data import Position
from training.state import STATE_TENSORS
from training.text_data import BucketedBatchSampler
from vocoder.config import FlowConfig
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig
from vocoder.text import checkpoint as tts_checkpoint
from vocoder.text.frontend import load_text_frontend
from vocoder.text.model import AcousticConfig, TextToMel

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

TRAIN = ["LJ001-0002", "LJ001-0008"]  # 1.9 s and 1.8 s
VAL = "LJ001-0013"  # 2.6 s
HELD_OUT = "LJ001-0027"
UNLABELED = "hifigan_demo_e2e_gt_1"
STEPS, RESUME_AT = 30, 15
TINY_MODEL = {"hidden_channels": 32, "n_conv_layers": 1, "n_attention_layers": 1, "filter_channels": 64,
              "dropout": 0.1, "duration_channels": 32, "n_blocks": 4, "decoder_layers": 2, "decoder_channels": 32}


@pytest.fixture
def dataset(tmp_path: Path, speech_dir: Path) -> Path:
    """An LJSpeech-layout copy (`metadata.csv` + `wavs/`) of two training clips, one val clip,
    a held-out clip and an untranscribed clip, the last two trimmed to 1 s."""
    root = tmp_path / "LJSpeech"
    (root / "wavs").mkdir(parents=True)
    lines = {line.split("|")[0]: line for line in (speech_dir / "ljspeech" / "metadata.csv").read_text().splitlines()}
    rows = []
    for clip_id in [*TRAIN, VAL, HELD_OUT]:
        audio, rate = soundfile.read(speech_dir / "ljspeech" / f"{clip_id}.flac")
        soundfile.write(root / "wavs" / f"{clip_id}.wav", audio[:rate] if clip_id == HELD_OUT else audio, rate)
        rows.append(lines[clip_id])
    audio, rate = soundfile.read(speech_dir / "ljspeech_unlabeled" / f"{UNLABELED}.flac")
    soundfile.write(root / "wavs" / f"{UNLABELED}.wav", audio[:rate], rate)
    rows.append(f"{UNLABELED}||")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def write_recipe(tmp_path: Path, **data: object) -> Path:
    (tmp_path / "val.txt").write_text(f"{VAL}\n")
    raw = {"task": "acoustic", "model": TINY_MODEL, "mel": {},
           "data": {"val_filelist": str(tmp_path / "val.txt"), "val_clips": 1, "bucket_batches": 2, **data},
           "optim": {"lr": 2e-3, "betas": [0.9, 0.98], "grad_clip": 50.0},
           "train": {"max_steps": STEPS, "batch_size": 2, "log_every": 1, "val_every": RESUME_AT,
                     "checkpoint_every": RESUME_AT, "keep_last": 2, "threads": 1, "deterministic": True,
                     "device": "cpu"}}
    path = tmp_path / "acoustic.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def records(run: Path, kind: str = "train") -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def test_trains_checkpoints_serves_and_resumes_exactly(tmp_path, dataset, capsys):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    assert main(["--config", str(recipe), "--data", str(dataset), "--out", str(run)]) == 0
    log = capsys.readouterr().err
    assert f"left out 1 held-out evaluation clips ({HELD_OUT})" in log
    assert f"left out 1 clips without a transcript (e.g. {UNLABELED})" in log
    assert "training on 2 utterances" in log and "validating on 1" in log

    # The loss falls: NLL (nats per mel value) from about 9 over the first five steps to about
    # 1.5 over the last five (a Gaussian per mel band fitted to these clips scores about 1.9).
    train = records(run)
    assert sorted(train) == list(range(1, STEPS + 1))
    first, last = ({key: np.mean([train[s][key] for s in steps]) for key in ("nll", "duration")}
                   for steps in (range(1, 6), range(STEPS - 4, STEPS + 1)))
    assert last["nll"] < 2.0 and last["nll"] < 0.3 * first["nll"], (first, last)
    assert last["duration"] < 0.5 * first["duration"], (first, last)
    assert all(r["throughput"] > 0 and "grad_norm" in r and "sigma" not in r for r in train.values())
    val = records(run, "val")
    assert sorted(val) == [RESUME_AT, STEPS]
    assert all(np.isfinite([r["nll"], r["duration"], r["length_ratio"]]).all() for r in val.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {f"val_mel/{VAL}_synthesized", f"val_mel/{VAL}_target"} <= set(events.Tags()["images"])

    # Each checkpoint is a text-to-mel checkpoint the front-end (and so the service) loads.
    final = run / "checkpoints" / f"step-{STEPS:08d}"
    model, checkpoint = tts_checkpoint.load_model(final)
    assert isinstance(model, TextToMel) and checkpoint.config == AcousticConfig(**TINY_MODEL)
    assert checkpoint.metadata["step"] == STEPS and checkpoint.metadata["train_config"]["task"] == "acoustic"
    frontend = load_text_frontend(final)
    assert frontend.trained and f"after {STEPS} training steps" in frontend.description
    assert frontend.synthesize_mel("Printing, in the only sense.", seed=0).shape[0] == 80

    # Resumed from the middle into another run directory: the same losses and weights, bit for bit.
    resumed = tmp_path / "resumed"
    assert main(["--resume", str(run / "checkpoints" / f"step-{RESUME_AT:08d}"), "--out", str(resumed)]) == 0
    again = records(resumed)
    assert sorted(again) == list(range(RESUME_AT + 1, STEPS + 1))
    for step in again:
        for key in ("loss", "nll", "duration", "grad_norm", "lr"):
            assert again[step][key] == train[step][key], (step, key)
    a, b = (load_file(str(r / "checkpoints" / f"step-{STEPS:08d}" / STATE_TENSORS)) for r in (run, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optimizer.")))


def test_held_out_clips_refused(tmp_path, dataset, capsys):
    filelist = tmp_path / "train.txt"
    filelist.write_text(f"{TRAIN[0]}\n{HELD_OUT}\n")
    recipe = write_recipe(tmp_path, train_filelist=str(filelist))
    assert main(["--config", str(recipe), "--data", str(dataset), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"held-out evaluation clips {HELD_OUT}" in err and "Traceback" not in err


def test_init_takes_a_text_to_mel_checkpoint(tmp_path, dataset, tiny_recipe, capsys):
    torch.manual_seed(0)
    source = TextToMel(AcousticConfig(**TINY_MODEL))
    init = tts_checkpoint.save_model(tmp_path / "init", source, MelConfig())
    recipe = write_recipe(tmp_path)
    run = tmp_path / "run"
    assert main(["--config", str(recipe), "--data", str(dataset), "--out", str(run), "--init", str(init),
                 "train.max_steps=1", "optim.lr=1e-9", "train.val_every=100"]) == 0
    trained = tts_checkpoint.load_checkpoint(run / "checkpoints" / "step-00000001")
    for key, value in source.state_dict().items():
        assert torch.allclose(trained.state_dict[key], value, atol=1e-5), key

    vocoder = Vocoder.from_config(FlowConfig.from_dict(tiny_recipe["model"]), MelConfig(**tiny_recipe["mel"]))
    assert main(["--config", str(recipe), "--data", str(dataset), "--out", str(tmp_path / "r2"),
                 "--init", str(vocoder.save_pretrained(tmp_path / "vocoder"))]) == 2
    assert "not a text-to-mel checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("model.n_flows=4", "unknown config key 'model.n_flows'"),
    ("model=efficient", "must be a mapping of AcousticConfig fields"),
    ("model.n_heads=5", "n_heads 5 must divide hidden_channels 32"),
    ("train.precision=bf16", "the acoustic task trains in fp32 only"),
    ("task=tts", "config key 'task' must be one of ['vocoder', 'acoustic']"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    assert main(["--config", str(write_recipe(tmp_path)), "--print-config", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err


def test_print_config_resolves_the_acoustic_model(tmp_path, capsys):
    assert main(["--config", str(write_recipe(tmp_path)), "--print-config", "model.n_blocks=6"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task"] == "acoustic" and printed["mel"]["n_mels"] == 80
    assert printed["model"] == {**AcousticConfig(**TINY_MODEL).to_dict(), "n_blocks": 6}


def test_bucketed_batches_cover_ranks_and_resume():
    lengths = [int(n) for n in np.random.default_rng(0).integers(50, 900, size=37)]

    def batches(rank: int, start: Position = Position()) -> list[list[int]]:
        sampler = BucketedBatchSampler(lengths, 2, seed=7, per_rank=4, world_size=2, rank=rank, start=start)
        found = []
        for keys in sampler:
            found.append([index for _, index in keys])
            if len(found) == 2 * sampler.batches_per_epoch:
                return found
        raise AssertionError("unreachable")

    ranks = [batches(0), batches(1)]
    assert len(ranks[0]) == 2 * (37 // 8) and ranks[0] == batches(0)
    for epoch in range(2):
        seen = [i for rank in ranks for batch in rank[epoch * 4:(epoch + 1) * 4] for i in batch]
        assert len(seen) == len(set(seen)) == 32  # each clip at most once per epoch, over both ranks
    assert sorted(map(sorted, ranks[0][:4])) != sorted(map(sorted, ranks[0][4:]))  # epochs differ
    # Both ranks' shares of a step come from one sorted slice of a pool: similar lengths.
    spread = [max(lengths[i] for i in a + b) - min(lengths[i] for i in a + b) for a, b in zip(*ranks)]
    assert np.mean(spread) < 0.6 * (max(lengths) - min(lengths)), spread
    assert batches(0, Position(1, 2))[:2] == ranks[0][6:8]  # a saved position resumes the same stream

"""`vocoder eval` end to end on short real LJSpeech clips with a tiny random model,
the clip selection forms, and its one-line errors."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib.image
import pytest
import soundfile

from speech import speech_clip
from vocoder.config import FlowConfig
from vocoder.evaluation import harness
from vocoder.evaluation.cli import main
from vocoder.evaluation.harness import METRICS, SYSTEMS, Clip, DatasetError, select_clips
from vocoder.inference import Vocoder

TINY = FlowConfig(n_group=256, n_flows=2, n_early_every=4, n_layers=2, n_channels=8)
SECONDS = 2.5
COLD_SECONDS = 2.0  # a simulated one-off cost, several times one clip's synthesis
TEXTS = {
    # LJ001-0001 is cut to its first 2.5 s, so its line only fits --no-asr runs.
    "LJ001-0001": "Printing, in the only sense with which we are at present concerned",
    "LJ001-0002": "in being comparatively modern.",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for clip_id in TEXTS:
        audio, rate = soundfile.read(speech_clip(clip_id=clip_id), dtype="float32")
        soundfile.write(folder / f"{clip_id}.flac", audio[: int(SECONDS * rate)], rate)
    (folder / "metadata.csv").write_text("".join(f"{i}|{t}|{t}\n" for i, t in TEXTS.items()))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return Vocoder.from_config(TINY, seed=0).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_eval_writes_json_markdown_and_figure(data_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--data", str(data_dir), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--no-asr", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| ground truth |" in printed and "| Griffin-Lim (60 it.) |" in printed

    results = json.loads((out / "results.json").read_text())
    assert [clip["id"] for clip in results["clips"]] == list(TEXTS)
    assert results["command"].startswith("vocoder eval --data ")
    assert results["checkpoint"]["path"] == str(checkpoint.resolve()) and len(results["checkpoint"]["sha256"]) == 64
    assert {"platform", "cpu_count", "torch"} <= set(results["machine"])
    for clip in results["clips"]:
        for system in SYSTEMS:
            scores = clip["scores"][system]
            for metric in METRICS:
                expected = metric.key != "wer" and (system != "ground_truth" or metric.of_recording)
                if metric.key == "f0_rmse_cents" and system == "model":
                    continue  # the random model's noise may have no voiced frame in common with speech
                assert (scores[metric.key] is not None) == expected, (clip["id"], system, metric.key)
                assert scores[metric.key] is None or math.isfinite(scores[metric.key])
    means = results["means"]
    assert means["griffin_lim"]["log_mel_l1"] < means["model"]["log_mel_l1"]
    assert means["griffin_lim"]["pesq_wb"] > means["model"]["pesq_wb"]

    markdown = (out / "results.md").read_text()
    assert "## Per clip" in markdown and "| LJ001-0002 | Griffin-Lim (60 it.) |" in markdown
    image = matplotlib.image.imread(out / "spectrograms.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_eval_asr_on_one_selected_clip(data_dir, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(["--data", str(data_dir), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--clips", "LJ001-0002", "--plot-clip", "LJ001-0002", "--device", "cpu"]) == 0
    (clip,) = json.loads((out / "results.json").read_text())["clips"]
    assert clip["id"] == "LJ001-0002" and set(clip["transcripts"]) == set(SYSTEMS)
    wer = {system: clip["scores"][system]["wer"] for system in SYSTEMS}
    assert all(value is not None and value >= 0 for value in wer.values())
    assert wer["ground_truth"] <= wer["model"]


def ids(clips: list[Clip]) -> list[str]:
    return [clip.id for clip in clips]


def test_clip_selection_ids_ranges_and_limit():
    clips = [Clip(f"LJ001-{n:04d}", Path(f"{n}.wav")) for n in range(20, 36)]
    assert ids(select_clips(clips, "LJ001-0025..LJ001-0032")) == [f"LJ001-{n:04d}" for n in range(25, 33)]
    assert ids(select_clips(clips, "LJ001-0030, LJ001-0021..LJ001-0022,LJ001-0030")) == [
        "LJ001-0030", "LJ001-0021", "LJ001-0022"]
    assert ids(select_clips(clips, None, limit=2)) == ["LJ001-0020", "LJ001-0021"]
    with pytest.raises(DatasetError, match="no clip 'LJ001-0099'"):
        select_clips(clips, "LJ001-0025..LJ001-0099")
    with pytest.raises(DatasetError, match="is empty"):
        select_clips(clips, "LJ001-0030..LJ001-0025")


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/missing"], "no such directory"),
    (["--data", "{tmp}"], "no audio files"),
    (["--data", "{data}", "--clips", "LJ009-0001"], "no clip 'LJ009-0001'"),
    (["--data", "{data}", "--checkpoint", "{tmp}"], "missing model.safetensors"),
    (["--data", "{data}", "--plot-clip", "nope"], "--plot-clip nope is not among"),
])
def test_user_errors_are_one_line(argv, message, data_dir, tmp_path, capsys):
    argv = [arg.format(data=data_dir, tmp=tmp_path) for arg in argv]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_first_clip_is_timed_warm(data_dir, monkeypatch):
    """A one-off cost on the first call of a timed code path (a numba compile, CUDA kernels, an FFT
    plan) lands on an untimed warm-up, not on the first clip's speed."""
    model = Vocoder.from_config(TINY, seed=0)
    warmed = set()

    def first_call_costs(system: str, function):
        def wrapper(*args, **kwargs):
            path = (system, kwargs.get("chunk_frames", "default"))
            if path not in warmed:
                warmed.add(path)
                time.sleep(COLD_SECONDS)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(model, "infer", first_call_costs("model", model.infer))
    monkeypatch.setattr(harness, "griffin_lim_from_mel", first_call_costs("griffin_lim", harness.griffin_lim_from_mel))
    synthesized = harness.synthesize_clips(model, harness.find_clips(data_dir), progress=False)
    assert [clip.id for clip, *_ in synthesized] == list(TEXTS)
    for clip, *_, seconds in synthesized:
        assert seconds["model"] < COLD_SECONDS and seconds["griffin_lim"] < COLD_SECONDS, (clip.id, seconds)

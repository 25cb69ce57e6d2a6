"""Copy-synthesis evaluation: every clip goes audio -> mel -> audio through the model and
through Griffin-Lim, and each system, the recording itself included, is scored with the
objective metrics, the offline ASR check and its synthesis speed."""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pesq as pesq_backend
import torch
from tqdm import tqdm

from vocoder.audio import load_audio
from vocoder.errors import AudioError, VocoderError
from vocoder.evaluation.asr import normalize_words, transcribe, word_error_rate
from vocoder.evaluation.griffin_lim import griffin_lim_from_mel
from vocoder.evaluation.metrics import (
    comb_level_db,
    dnsmos,
    f0_metrics,
    log_mel_l1,
    multi_resolution_stft_distance,
    pesq_wb,
    stoi,
)
from vocoder.inference import Vocoder
from vocoder.options import SIGMA

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
METADATA_FILE = "metadata.csv"
GRIFFIN_LIM_ITERS = 60
SYSTEMS = ("ground_truth", "model", "griffin_lim")
RECORDING = "ground_truth"


class DatasetError(VocoderError):
    """A clip folder, its metadata.csv or a clip selection cannot be used."""


@dataclass(frozen=True)
class Metric:
    """One reported number; `of_recording` is False where it needs the recording as the
    reference or measures synthesis, so it is n/a for the ground truth row."""

    key: str
    label: str
    higher_is_better: bool
    of_recording: bool
    digits: int = 3


METRICS = (
    Metric("pesq_wb", "PESQ-wb", True, False, 2),
    Metric("stoi", "STOI", True, False),
    Metric("dnsmos_sig", "DNSMOS SIG", True, True, 2),
    Metric("dnsmos_bak", "DNSMOS BAK", True, True, 2),
    Metric("dnsmos_ovrl", "DNSMOS OVRL", True, True, 2),
    Metric("mr_stft", "MR-STFT", False, False),
    Metric("log_mel_l1", "log-mel L1", False, False),
    Metric("f0_rmse_cents", "F0 RMSE (cents)", False, False, 1),
    Metric("vuv_error", "V/UV error", False, False),
    Metric("comb_db", "group-rate comb (dB)", False, True, 1),
    Metric("wer", "ASR WER", False, True),
    Metric("rtf", "RTF (x real time)", True, False, 2),
)
"""`rtf` is audio seconds per wall second of synthesis alone, so above 1 is faster than real time."""

Scores = dict[str, float | None]


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str | None = None


@dataclass
class ClipResult:
    id: str
    seconds: float
    text: str | None
    scores: dict[str, Scores]
    transcripts: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Per-clip scores of every system, run information, and the log-mels `(n_mels, T)`
    of each system for `example_clip`, the clip the spectrogram figure shows."""

    clips: list[ClipResult]
    info: dict[str, Any]
    example_clip: str
    example_mels: dict[str, np.ndarray]

    def means(self) -> dict[str, Scores]:
        """Mean of each metric per system over the clips where it is defined (None if none)."""
        means: dict[str, Scores] = {}
        for system in SYSTEMS:
            means[system] = {}
            for metric in METRICS:
                values = [clip.scores[system][metric.key] for clip in self.clips
                          if clip.scores[system][metric.key] is not None]
                means[system][metric.key] = float(np.mean(values)) if values else None
        return means


def read_metadata(path: Path) -> dict[str, str]:
    """Clip id -> transcript from an LJSpeech-style `id|text|normalized text` file."""
    texts = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [part.strip() for part in line.split("|")]
        if len(fields) < 2:
            raise DatasetError(f"{path}:{number}: expected 'id|text|normalized text'")
        # The normalized column spells numbers and abbreviations out as they are spoken,
        # which is what the recognizer can produce.
        text = fields[2] if len(fields) > 2 and fields[2] else fields[1]
        if normalize_words(text):
            texts[fields[0]] = text
    return texts


def find_clips(data_dir: str | Path) -> list[Clip]:
    """The audio files (wav, flac, ogg) directly in `data_dir`, sorted by id (file stem),
    with their transcripts when the folder has a metadata.csv."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: no such directory")
    paths = sorted(path for path in data_dir.iterdir()
                   if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file())
    if not paths:
        raise DatasetError(f"{data_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    metadata = data_dir / METADATA_FILE
    texts = read_metadata(metadata) if metadata.is_file() else {}
    clips: dict[str, Clip] = {}
    for path in paths:
        if path.stem in clips:
            raise DatasetError(f"{data_dir}: two audio files for clip {path.stem}")
        clips[path.stem] = Clip(path.stem, path, texts.get(path.stem))
    return list(clips.values())


def select_clips(clips: Sequence[Clip], spec: str | None = None, limit: int | None = None) -> list[Clip]:
    """Clips named by `spec`, in its order: comma-separated ids, each id or an inclusive
    range `FIRST..LAST` of ids present (by sorted id); then at most `limit` of them."""
    selected = list(clips)
    if spec is not None:
        by_id = {clip.id: clip for clip in clips}
        chosen: dict[str, Clip] = {}
        for token in (part.strip() for part in spec.split(",")):
            first, is_range, last = token.partition("..")
            for name in (first, last) if is_range else (first,):
                if name not in by_id:
                    raise DatasetError(f"clip selection: no clip {name!r} in the data folder")
            if is_range and first > last:
                raise DatasetError(f"clip selection: range {token} is empty ({first} sorts after {last})")
            for clip_id in (sorted(i for i in by_id if first <= i <= last) if is_range else [first]):
                chosen.setdefault(clip_id, by_id[clip_id])
        selected = list(chosen.values())
    return selected[:limit] if limit is not None else selected


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without this the timer would stop before they finish.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score(model: Vocoder, recording: np.ndarray, audio: np.ndarray, synthesis_seconds: float | None,
           text: str | None) -> tuple[Scores, str | None]:
    """Every metric of one system's `audio (L,)` for one clip, and its ASR transcript;
    `synthesis_seconds` is None for the recording itself."""
    rate = model.sample_rate
    scores: Scores = dict.fromkeys((metric.key for metric in METRICS), None)
    mos = dnsmos(audio, rate)
    scores.update(dnsmos_sig=mos["SIG"], dnsmos_bak=mos["BAK"], dnsmos_ovrl=mos["OVRL"],
                  comb_db=comb_level_db(audio, rate, model.flow.config.n_group))
    if synthesis_seconds is not None:
        try:
            scores["pesq_wb"] = pesq_wb(recording, audio, rate)
        except pesq_backend.NoUtterancesError:
            pass  # PESQ is undefined when it finds no speech in the reference
        pitch = f0_metrics(recording, audio, rate)
        scores.update(
            stoi=stoi(recording, audio, rate),
            mr_stft=multi_resolution_stft_distance(recording, audio),
            log_mel_l1=log_mel_l1(recording, audio, model.mel),
            f0_rmse_cents=_finite(pitch["f0_rmse_cents"]),
            vuv_error=pitch["vuv_error"],
            rtf=audio.size / rate / synthesis_seconds,
        )
    transcript = None
    if text is not None:
        transcript = transcribe(audio, rate)
        scores["wer"] = word_error_rate(text, transcript)
    return scores, transcript


def _synthesize(model: Vocoder, audio: np.ndarray, sigma: float, seed: int
                ) -> tuple[torch.Tensor, dict[str, np.ndarray], dict[str, float]]:
    """The clip's log-mel `(n_mels, T)`, each system's audio `(L,)` and its synthesis time."""
    mel = model.mel_spectrogram(audio)
    # One latent seed for every clip, so a clip's score does not depend on the selection.
    z = model.sample_latent(mel.shape[2], seed=seed)
    _synchronize(model.device)
    start = time.perf_counter()
    vocoded = model.infer(mel, sigma=sigma, z=z)[0, : audio.size].cpu().numpy()
    model_seconds = time.perf_counter() - start
    start = time.perf_counter()
    griffin_lim = griffin_lim_from_mel(mel[0].cpu().numpy(), model.mel.config, GRIFFIN_LIM_ITERS, audio.size)
    griffin_lim_seconds = time.perf_counter() - start
    outputs = {RECORDING: audio, "model": vocoded, "griffin_lim": griffin_lim}
    return mel[0], outputs, {"model": model_seconds, "griffin_lim": griffin_lim_seconds}


def synthesize_clips(model: Vocoder, clips: Sequence[Clip], sigma: float = SIGMA.default, seed: int = 0, progress: bool = True
                     ) -> list[tuple[Clip, np.ndarray, torch.Tensor, dict[str, np.ndarray], dict[str, float]]]:
    """Each clip's recording `(L,)`, log-mel `(n_mels, T)`, systems' audio and synthesis times.

    The first clip is synthesized twice and timed the second time: the untimed pass pays the
    one-off costs (allocator, CUDA kernels, numba compiles, FFT plans) of the very code paths
    that are timed, which a token input on another path does not.
    """
    # Synthesis is timed before any scoring: the metric packages (ONNX Runtime, PocketSphinx,
    # numba) leave worker threads behind that would otherwise slow the timed passes.
    synthesized = []
    for index, clip in enumerate(tqdm(clips, desc="synthesizing", unit="clip", disable=not progress)):
        audio = load_audio(clip.path, model.sample_rate)
        if audio.size < model.mel.config.min_samples:
            raise AudioError(f"{clip.path}: too short to evaluate ({audio.size} samples)")
        if index == 0:
            _synthesize(model, audio, sigma, seed)
        mel, outputs, synthesis_seconds = _synthesize(model, audio, sigma, seed)
        if not np.isfinite(outputs["model"]).all():
            raise VocoderError(f"the model produced NaN or infinite samples for clip {clip.id}")
        synthesized.append((clip, audio, mel, outputs, synthesis_seconds))
    return synthesized


def evaluate(model: Vocoder, clips: Sequence[Clip], sigma: float = SIGMA.default, seed: int = 0, asr: bool = True,
             plot_clip: str | None = None, progress: bool = True) -> EvalReport:
    """Copy-synthesis of `clips` by `model` and by Griffin-Lim, scored against the recordings.

    ASR runs only where a clip has a transcript and `asr` is set. `plot_clip` (default: the
    first clip) is the clip whose log-mels are kept for the spectrogram figure.
    """
    if not clips:
        raise DatasetError("no clips to evaluate")
    example_clip = plot_clip if plot_clip is not None else clips[0].id
    if example_clip not in {clip.id for clip in clips}:
        raise DatasetError(f"plot clip {example_clip!r} is not among the evaluated clips")
    synthesized = synthesize_clips(model, clips, sigma, seed, progress)
    results, example_mels = [], {}
    for clip, audio, mel, outputs, synthesis_seconds in tqdm(synthesized, desc="scoring", unit="clip",
                                                             disable=not progress):
        text = clip.text if asr else None
        result = ClipResult(clip.id, audio.size / model.sample_rate, clip.text, {})
        for system, system_audio in outputs.items():
            scores, transcript = _score(model, audio, system_audio, synthesis_seconds.get(system), text)
            result.scores[system] = scores
            if transcript is not None:
                result.transcripts[system] = transcript
        results.append(result)
        if clip.id == example_clip:
            example_mels = {RECORDING: mel.cpu().numpy()} | {
                system: model.mel_spectrogram(outputs[system])[0].cpu().numpy()
                for system in SYSTEMS if system != RECORDING}
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(model.device),
        "settings": {"sigma": sigma, "seed": seed, "griffin_lim_iters": GRIFFIN_LIM_ITERS, "asr": asr},
        "model": {
            "config": model.flow.config.to_dict(),
            "parameters": sum(p.numel() for p in model.flow.parameters()),
            "random_init": bool(model.metadata.get("random_init", False)),
        },
    }
    return EvalReport(results, info, example_clip, example_mels)

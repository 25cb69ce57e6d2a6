"""Fit a source-filter flow's pitch predictor to pYIN labels of the training clips.

It runs once, before the flow trains (a resumed run finds it fitted), and the predictor
stays frozen afterwards, so the flow always conditions on a fixed function of the mel.
"""
from __future__ import annotations

import math

import librosa
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training.data import AudioStore
from training.logging_utils import log
from vocoder.mel import MelSpectrogram
from vocoder.pitch import (F0_CENTRE_HZ, F0_FRAME_SECONDS, F0_MAX_HZ, F0_MIN_HZ, PitchPredictor,
                           voiced_log_f0_error)

# pYIN F0 (Hz, 0 where unvoiced) and voicing (0 or 1) of one clip, at the mel's frame centres.
PitchLabels = tuple[np.ndarray, np.ndarray]

FIT_STEPS = 2000
FIT_WINDOW_FRAMES = 128
FIT_BATCH = 16
FIT_PEAK_LR = 2e-3
FIT_WARMUP_SHARE = 0.05
# Each window's frequency axis is stretched by up to this many octaves either way, its F0 label
# with it, so that the predictor meets voices pitched outside the few training speakers'.
FIT_WARP_OCTAVES = 0.5


def pyin_labels(audio: np.ndarray, sample_rate: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """pYIN F0 (Hz, 0 where unvoiced) and voicing `(L // hop + 1,)`, centred on the mel's frames,
    over the evaluation's 64 ms analysis window (long enough for the lowest F0 searched)."""
    f0, voiced, _ = librosa.pyin(audio, fmin=F0_MIN_HZ, fmax=F0_MAX_HZ, sr=sample_rate,
                                 frame_length=round(F0_FRAME_SECONDS * sample_rate), hop_length=hop, center=True)
    return np.where(voiced, np.nan_to_num(f0), 0.0).astype(np.float32), voiced.astype(np.float32)


def label_clips(store: AudioStore, sample_rate: int, hop: int) -> list[PitchLabels]:
    """pYIN labels of every clip of `store`."""
    return [pyin_labels(store.load(index), sample_rate, hop)
            for index in tqdm(range(len(store)), desc="pYIN labels", unit="clip")]


def continuous_f0(labels: PitchLabels) -> np.ndarray:
    """The F0 with unvoiced frames bridged linearly between their voiced neighbours (held at
    the ends; the predictor's centre where nothing is voiced), so that interpolating it between
    frames never passes through 0."""
    f0, voiced = labels
    known = np.flatnonzero(voiced > 0)
    if known.size == 0:
        return np.full_like(f0, F0_CENTRE_HZ)
    return np.interp(np.arange(f0.shape[0]), known, f0[known]).astype(np.float32)


def warp_frequency(mel: torch.Tensor, factor: float, band_hz: np.ndarray) -> torch.Tensor:
    """`mel` `(n_mels, T)` with its content moved along linear frequency by `factor` (harmonics
    and formants alike), interpolated between the bands centred at `band_hz`; the top band holds."""
    source = np.interp(band_hz / factor, band_hz, np.arange(band_hz.shape[0]))
    below = torch.from_numpy(np.floor(source).astype(np.int64))
    above = (below + 1).clamp(max=band_hz.shape[0] - 1)
    weight = torch.from_numpy(source - np.floor(source)).to(mel.dtype)[:, None]
    return mel[below] * (1 - weight) + mel[above] * weight


def _window_batch(examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rng: np.random.Generator,
                  band_hz: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mels, f0s, voiced = [], [], []
    for _ in range(FIT_BATCH):
        mel, f0, voicing = examples[rng.integers(len(examples))]
        frames = mel.shape[1]
        size = min(FIT_WINDOW_FRAMES, frames)
        start = int(rng.integers(0, frames - size + 1))
        pad = FIT_WINDOW_FRAMES - size
        factor = float(2 ** rng.uniform(-FIT_WARP_OCTAVES, FIT_WARP_OCTAVES))
        window_f0 = F.pad(f0[start:start + size], (0, pad)) * factor
        in_range = (window_f0 >= F0_MIN_HZ) & (window_f0 <= F0_MAX_HZ)
        mels.append(warp_frequency(F.pad(mel[:, start:start + size], (0, pad), mode="replicate"), factor, band_hz))
        f0s.append(window_f0)
        voiced.append(F.pad(voicing[start:start + size], (0, pad)) * in_range)
    return torch.stack(mels), torch.stack(f0s), torch.stack(voiced)


def pitch_loss(predictor: PitchPredictor, mel: torch.Tensor, f0: torch.Tensor,
               voiced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predictor's fitting loss; also its voiced log-F0 error in cents and its voicing
    error rate."""
    scores = predictor.scores(mel)
    with torch.no_grad():
        log_f0, voicing_logit = predictor.decode(scores)
        log_error = voiced_log_f0_error(log_f0, f0, voiced)
        vuv_error = ((voicing_logit > 0).float() != voiced).float().mean()
    return predictor.fit_loss(scores, f0, voiced), log_error * 1200 / np.log(2), vuv_error


def fit_pitch_predictor(predictor: PitchPredictor, store: AudioStore, mel: MelSpectrogram, seed: int,
                        steps: int = FIT_STEPS, labels: list[PitchLabels] | None = None) -> dict[str, float]:
    """Fit `predictor` on random windows of the clips of `store` and their pYIN `labels`
    (computed when not given), and mark it fitted. Returns the final training errors."""
    config = mel.config
    device = mel.filterbank.device
    if labels is None:
        labels = label_clips(store, config.sample_rate, config.hop_length)
    examples = []
    for index, (f0, voiced) in enumerate(labels):
        audio = store.load(index)
        with torch.no_grad():
            clip_mel = mel(torch.from_numpy(audio).to(device))[0]
        frames = min(clip_mel.shape[1], len(f0))
        examples.append((clip_mel[:, :frames], torch.from_numpy(f0[:frames]).to(device),
                         torch.from_numpy(voiced[:frames]).to(device)))
    rng = np.random.default_rng(seed)
    band_hz = librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin,
                                      fmax=config.fmax or config.sample_rate / 2)[1:-1]
    predictor.requires_grad_(True)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=FIT_PEAK_LR)
    # A short warm-up, then a cosine decay: the last steps refine rather than jump.
    warmup = max(1, round(FIT_WARMUP_SHARE * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))))
    cents = vuv = 0.0
    with tqdm(range(steps), desc="fitting pitch", unit="step") as bar:
        for step in bar:
            loss, cents_t, vuv_t = pitch_loss(predictor, *_window_batch(examples, rng, band_hz))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            cents, vuv = 0.9 * cents + 0.1 * float(cents_t), 0.9 * vuv + 0.1 * float(vuv_t)
            if step % 50 == 0:
                bar.set_postfix(cents=f"{cents:.0f}", vuv=f"{vuv:.3f}")
    predictor.requires_grad_(False)
    predictor.fitted.fill_(True)
    log.info("pitch predictor fitted on %d clips: voiced log-F0 error %.0f cents, voicing error %.3f "
             "(running means over the last steps)", len(examples), cents, vuv)
    return {"f0_cents": cents, "vuv_error": vuv}

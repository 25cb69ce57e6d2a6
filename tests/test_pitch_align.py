"""Training on the recording's own pitch: the phase aligned to its pulses, and the labels that
segments carry."""
import math

import numpy as np
import soundfile
import torch

from training.data import AudioStore, Clip, SegmentDataset
from training.pitch_fit import continuous_f0
from vocoder.pitch import PitchTrack, align_phase, sample_phase

RATE, HOP = 22050, 256


def _wrapped(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def test_aligned_phase_is_zero_on_the_pulses_of_a_gliding_pulse_train():
    length = 16384
    samples = torch.arange(length, dtype=torch.float64)
    true_phase = 1.3 + 2 * math.pi * torch.cumsum(150 + 20 * torch.sin(2 * math.pi * samples / length), 0) / RATE
    pulses = torch.nonzero(torch.diff(torch.floor(true_phase / (2 * math.pi))) > 0).flatten() + 1
    signal = torch.zeros(1, length, dtype=torch.float64)
    signal[0, pulses] = 1.0
    frames = torch.arange(length // HOP + 1, dtype=torch.float64)
    # The labelled F0 is 50 cents sharp, so the integrated phase alone drifts off the pulses.
    f0 = 1.03 * (150 + 20 * torch.sin(2 * math.pi * frames * HOP / length))
    track = PitchTrack.from_f0(f0.view(1, -1), torch.ones(1, frames.shape[0]), HOP, RATE)
    inner = pulses[10:-10]
    drifting, _ = sample_phase(track, HOP, RATE, 0, length)
    assert _wrapped(drifting[0, inner]).abs().max() > 1.0
    aligned, _ = sample_phase(align_phase(track, signal, HOP, RATE), HOP, RATE, 0, length)
    assert _wrapped(aligned[0, inner]).abs().max() < 0.05


def test_sample_phase_meets_each_frames_phase():
    generator = torch.Generator().manual_seed(0)
    frames = 8
    f0 = 100 + 100 * torch.rand(1, frames, generator=generator, dtype=torch.float64)
    track = PitchTrack.from_f0(f0, torch.ones(1, frames), HOP, RATE)
    moved = PitchTrack(track.f0, track.voicing, track.phase + torch.rand(1, frames, generator=generator) - 0.5)
    phase, _ = sample_phase(moved, HOP, RATE, 0, (frames - 1) * HOP + 1)
    at_centres = phase[:, ::HOP]
    assert torch.allclose(_wrapped(at_centres - moved.phase), torch.zeros_like(at_centres), atol=1e-9)
    original, _ = sample_phase(track, HOP, RATE, 0, (frames - 1) * HOP + 1)
    assert torch.allclose(original[:, ::HOP], track.phase, atol=1e-9)


def test_continuous_f0_bridges_unvoiced_frames():
    f0 = np.array([0, 100, 0, 0, 130, 0], dtype=np.float32)
    voiced = (f0 > 0).astype(np.float32)
    np.testing.assert_allclose(continuous_f0((f0, voiced)), [100, 100, 110, 120, 130, 130])
    assert (continuous_f0((np.zeros(3, np.float32), np.zeros(3, np.float32))) > 0).all()


def test_segments_carry_the_recordings_pitch_at_their_own_frames(tmp_path):
    path = tmp_path / "clip.flac"
    soundfile.write(path, np.zeros(HOP * 40, dtype=np.float32), RATE)
    clip_frames = 41
    f0 = 100 + np.arange(clip_frames, dtype=np.float32)  # 1 Hz per frame, to read positions off
    voicing = (np.arange(clip_frames) < 20).astype(np.float32)
    segment_length = HOP * 16
    dataset = SegmentDataset(AudioStore([Clip("clip", "test", path)], RATE, cache=True), segment_length, 16,
                             seed=3, pitch=[(f0, voicing)], hop=HOP)
    for epoch in range(4):
        audio, length, segment_f0, segment_voicing = dataset[(epoch, 0)]
        start = dataset.offset(epoch, 0, HOP * 40)
        expected = 100 + np.minimum(start / HOP + np.arange(17), clip_frames - 1)
        np.testing.assert_allclose(segment_f0.numpy(), expected, rtol=1e-6)
        positions = start / HOP + np.arange(17)
        assert (segment_voicing.numpy()[positions <= 19] == 1).all()
        assert (segment_voicing.numpy()[positions >= 20] == 0).all()

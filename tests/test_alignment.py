"""Tests of monotonic alignment search against an exhaustive search over every monotonic,
surjective alignment of small log-likelihood matrices."""
import itertools

import numpy as np
import pytest
import torch

from vocoder.errors import VocoderError
from vocoder.text.alignment import monotonic_alignment


def all_alignments(n_tokens: int, n_frames: int):
    """Every monotonic surjective alignment, as the token index of each frame: a
    non-decreasing sequence from 0 to n_tokens - 1 that steps by at most one."""
    for steps in itertools.product((0, 1), repeat=n_frames - 1):
        if sum(steps) == n_tokens - 1:
            yield np.concatenate([[0], np.cumsum(steps, dtype=int)])


def brute_force_best(log_likelihood: np.ndarray) -> float:
    n_tokens, n_frames = log_likelihood.shape
    return max(log_likelihood[tokens, np.arange(n_frames)].sum()
               for tokens in all_alignments(n_tokens, n_frames))


def check_is_alignment(path: np.ndarray) -> None:
    """Each frame on exactly one token; tokens start at 0, end at the last, step by <= 1."""
    assert np.all(path.sum(axis=0) == 1)
    tokens = path.argmax(axis=0)
    assert tokens[0] == 0 and tokens[-1] == path.shape[0] - 1
    assert set(np.diff(tokens).tolist()) <= {0, 1}


@pytest.mark.parametrize("n_tokens, n_frames", [(1, 1), (1, 5), (2, 2), (2, 6), (3, 5), (3, 7),
                                                (4, 4), (4, 7)])
def test_matches_brute_force(n_tokens, n_frames):
    generator = torch.Generator().manual_seed(n_tokens * 10 + n_frames)
    for _ in range(5):
        log_likelihood = torch.randn(1, n_tokens, n_frames, generator=generator) * 3
        path = monotonic_alignment(log_likelihood, torch.tensor([n_tokens]), torch.tensor([n_frames]))
        path = path[0].numpy()
        check_is_alignment(path)
        found = float((path * log_likelihood[0].numpy()).sum())
        assert found == pytest.approx(brute_force_best(log_likelihood[0].numpy().astype(np.float64)), abs=1e-5)


def test_batch_with_padding_matches_items_alone():
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 7), (2, 5), (3, 3)]
    padded = torch.randn(len(shapes), 4, 7, generator=generator)
    tokens = torch.tensor([n for n, _ in shapes])
    frames = torch.tensor([t for _, t in shapes])
    batch_path = monotonic_alignment(padded, tokens, frames)
    for b, (n, t) in enumerate(shapes):
        alone = monotonic_alignment(padded[b: b + 1, :n, :t], tokens[b: b + 1], frames[b: b + 1])[0]
        assert torch.equal(batch_path[b, :n, :t], alone)
        assert batch_path[b].sum() == t, "padding must stay unaligned"
        expected = brute_force_best(padded[b, :n, :t].double().numpy())
        assert float((alone * padded[b, :n, :t]).sum()) == pytest.approx(expected, abs=1e-5)


def test_obvious_diagonal_is_found():
    # Token i is by far the likeliest for frames 2i and 2i + 1.
    log_likelihood = torch.full((1, 3, 6), -10.0)
    for i in range(3):
        log_likelihood[0, i, 2 * i: 2 * i + 2] = 0.0
    path = monotonic_alignment(log_likelihood, torch.tensor([3]), torch.tensor([6]))
    assert path[0].argmax(dim=0).tolist() == [0, 0, 1, 1, 2, 2]


def test_rejects_fewer_frames_than_tokens():
    with pytest.raises(VocoderError, match="at least as many frames as tokens"):
        monotonic_alignment(torch.zeros(1, 4, 3), torch.tensor([4]), torch.tensor([3]))

"""Monotonic alignment search (MAS): the most likely monotonic, surjective alignment of
mel frames to text tokens, found by dynamic programming over a log-likelihood matrix.
Used by the text-to-mel flow during training; it is not differentiable."""
from __future__ import annotations

import numpy as np
import torch

from vocoder.errors import VocoderError


def monotonic_alignment(log_likelihood: torch.Tensor, token_lengths: torch.Tensor,
                        frame_lengths: torch.Tensor) -> torch.Tensor:
    """Hard alignment `(B, N, T)` (0/1) maximising the summed `log_likelihood` `(B, N, T)`.

    `log_likelihood[b, i, j]` is the log-likelihood of frame j under token i. Within each
    item's valid region (`token_lengths[b]` tokens, `frame_lengths[b]` frames) every frame
    is assigned to exactly one token, the first frame to the first token and the last
    frame to the last token, and the token index never decreases nor skips a token, so
    every token gets at least one frame. Padding comes back as zeros.
    """
    batch, n_tokens, n_frames = log_likelihood.shape
    tokens = token_lengths.detach().cpu().long().numpy()
    frames = frame_lengths.detach().cpu().long().numpy()
    if np.any(tokens < 1) or np.any(frames < tokens) or tokens.max(initial=0) > n_tokens \
            or frames.max(initial=0) > n_frames:
        raise VocoderError(
            f"cannot align {tokens.tolist()} tokens to {frames.tolist()} frames: every item needs "
            f"at least one token and at least as many frames as tokens, within ({n_tokens}, {n_frames})")
    # Float64 keeps long sums of large negative log-likelihoods from tying by rounding.
    values = log_likelihood.detach().to("cpu", torch.float64, copy=True).numpy()
    token_index = np.arange(n_tokens)
    values[token_index[None, :] >= tokens[:, None]] = -np.inf

    # best[b, i] is the best score of frames 0..j ending on token i; it is updated in
    # place frame by frame, vectorised over the batch and the tokens.
    best = np.full((batch, n_tokens), -np.inf)
    best[:, 0] = values[:, 0, 0]
    from_previous_token = np.zeros((batch, n_tokens, n_frames), dtype=bool)
    for j in range(1, n_frames):
        advanced = np.concatenate([np.full((batch, 1), -np.inf), best[:, :-1]], axis=1)
        from_previous_token[:, :, j] = advanced > best
        best = np.maximum(best, advanced) + values[:, :, j]

    path = np.zeros((batch, n_tokens, n_frames), dtype=np.float32)
    items = np.arange(batch)
    current = tokens - 1
    for j in range(n_frames - 1, -1, -1):
        active = j < frames
        path[items[active], current[active], j] = 1.0
        current = current - (active & from_previous_token[items, current, j])
    return torch.from_numpy(path).to(log_likelihood.device)

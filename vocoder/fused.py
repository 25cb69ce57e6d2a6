"""The inference fast path, kept apart from the reference modules that training runs.

`fuse(flow)` returns a copy of a `WaveFlow` for sampling and encoding only. It shares the
flow's parameters and computes the same function in a faster order: the gated conditioners
fold and fuse their projections and work in place, the waveglow upsampler accumulates whole
hop-long blocks, and each 1x1 convolution's inverse is computed once. It never tracks
gradients. `Vocoder` builds one at load time; tests/test_flow.py checks it against the reference.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.conditioner import GatedConditioner
from vocoder.flow import Invertible1x1Conv, WaveFlow


def _matmul_1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.conv1d(x, weight, bias)` for a 1x1 `weight` `(C_out, C_in, 1)`, as one batched matmul."""
    return torch.baddbmm(bias.unsqueeze(1), weight.squeeze(2).expand(len(x), -1, -1), x)


def _conv_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        padding: int = 0, dilation: int = 1) -> torch.Tensor:
    """`F.conv1d` on `(B, C, 1, T)` channels-last tensors, with the same `(C_out, C_in, K)` weight."""
    return F.conv2d(x, weight.unsqueeze(2), bias, padding=(0, padding), dilation=(1, dilation))


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """`(B, C, T)` to `(B, C, 1, T)` stored time-major; free when `x` already is (see `WaveFlow.condition`)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _gated_activation_(x: torch.Tensor, channels: int) -> torch.Tensor:
    """`gated_activation` that overwrites `x`. tanh(a) = 1 - 2 sigmoid(-2a) makes it one sigmoid
    pass over both halves: torch's CPU tanh is several times slower than its sigmoid."""
    x[:, :channels].mul_(-2)
    gate = x.sigmoid_()[:, channels:]
    return torch.addcmul(gate, x[:, :channels], gate, value=-2)


class FusedConditioner(nn.Module):
    """`GatedConditioner` for inference: `reference`'s function, rearranged."""

    def __init__(self, reference: GatedConditioner, matmul_projections: bool) -> None:
        super().__init__()
        self.reference = reference
        # 1x1 convolutions as batched matmuls: on 2 CPU cores that is 1.1-3.3x faster at the
        # efficient family's sizes (128 channels). At NVIDIA's sizes (640 -> 512 and 256 -> 256
        # channels) oneDNN's channels-last convolution is the faster one.
        self.matmul_projections = matmul_projections

    @torch.no_grad()
    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The reference's `forward`, rearranged for speed; equal to it up to float rounding.

        Each layer projects only its own slice of the conditioning (measurably faster than one
        projection for all layers) and updates in place. `end` is linear, so where it narrows
        (2 n_half < n_channels, NVIDIA's layout) it folds into every layer's skip projection,
        and the skip sum disappears. NVIDIA-sized plain convolutions run on channels-last
        tensors, which spares oneDNN a reorder of every input and output (about 7% of the
        `waveglow` preset's time on 2 cores).
        """
        reference = self.reference
        c, last = reference.n_channels, reference.n_layers - 1
        plain = not self.matmul_projections
        if plain:
            x, cond = _to_channels_last(x), _to_channels_last(cond)
            mask = None if mask is None else mask.unsqueeze(2)
        project = _conv_channels_last if plain else _matmul_1x1
        cond_weight, cond_bias = reference.cond_layer.weight, reference.cond_layer.bias
        fold_end = reference.end.out_channels < c
        end_weight, out_bias = reference.end.weight.squeeze(2), reference.end.bias
        hidden = project(x, reference.start.weight, reference.start.bias)
        if mask is not None:
            hidden.mul_(mask)
        out = None
        for i, (in_layer, res_skip_layer) in enumerate(zip(reference.in_layers, reference.res_skip_layers)):
            part = slice(2 * c * i, 2 * c * (i + 1))
            if not plain:
                acts = project(in_layer.depthwise(hidden), in_layer.pointwise.weight, in_layer.pointwise.bias)
            elif i == 0:
                acts = self._first_layer_through_start(x, mask)
            else:
                acts = _conv_channels_last(hidden, in_layer.weight, in_layer.bias,
                                           in_layer.padding[0], in_layer.dilation[0])
            acts = _gated_activation_(acts.add_(project(cond, cond_weight[part], cond_bias[part])), c)
            residual = None
            if fold_end:
                weight, bias = res_skip_layer.weight.squeeze(2), res_skip_layer.bias
                skip = slice(c, 2 * c) if i < last else slice(0, c)
                folded = end_weight @ weight[skip]
                out_bias = out_bias + end_weight @ bias[skip]
                if i < last:
                    # One projection for the residual and the (end-folded) skip reads `acts` once.
                    weight = torch.cat([weight[:c], folded])
                    bias = torch.cat([bias[:c], bias.new_zeros(len(folded))])
                    residual, skip_out = project(acts, weight.unsqueeze(2), bias).split([c, len(folded)], dim=1)
                else:
                    skip_out = project(acts, folded.unsqueeze(2), None if plain else bias.new_zeros(len(folded)))
            else:
                skip_out = project(acts, res_skip_layer.weight, res_skip_layer.bias)
                if i < last:
                    residual, skip_out = skip_out[:, :c], skip_out[:, c:]
            out = skip_out if out is None else out.add_(skip_out)
            if residual is not None:
                hidden.add_(residual)
                if mask is not None:
                    hidden.mul_(mask)
        if fold_end:
            out = out.add_(out_bias.view(-1, *[1] * (out.dim() - 2)))
        else:
            out = project(out, reference.end.weight, reference.end.bias)
        return out.squeeze(2) if plain else out

    def _first_layer_through_start(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Layer 0's convolution of `start(x)` (masked), folded through the 1x1 `start`.

        Its input is then x and the validity of each position (which carries start's bias, and
        is zero in the padding like masked hidden states): n_half + 1 channels, not n_channels.
        """
        reference = self.reference
        layer = reference.in_layers[0]
        valid = torch.ones_like(x[:, :1]) if mask is None else mask
        inputs = torch.cat([x if mask is None else x * mask, valid], dim=1).contiguous(memory_format=torch.channels_last)
        weight = torch.cat([torch.einsum("ocj,ci->oij", layer.weight, reference.start.weight.squeeze(2)),
                            torch.einsum("ocj,c->oj", layer.weight, reference.start.bias).unsqueeze(1)], dim=1)
        return _conv_channels_last(inputs, weight, layer.bias, layer.padding[0], layer.dilation[0])


class CachedInverse1x1Conv(nn.Module):
    """`Invertible1x1Conv` whose inverse is computed once while its weight is unchanged."""

    def __init__(self, reference: Invertible1x1Conv) -> None:
        super().__init__()
        self.reference = reference
        self._key: tuple | None = None
        self._inverse: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x)

    def log_abs_det(self) -> torch.Tensor:
        return self.reference.log_abs_det()

    @torch.no_grad()
    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.reference.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._inverse is None or self._key != key:
            self._inverse, self._key = self.reference.inverse_weight(), key
        return torch.matmul(self._inverse.to(x.dtype), x)


class FusedWaveFlow(WaveFlow):
    """A `WaveFlow` whose parts are the fused ones (made by `fuse`)."""

    def upsample_unfolded(self, mel: torch.Tensor, groups: int) -> torch.Tensor:
        """The reference's upsample-and-unfold as a few matmuls that accumulate whole hop-long blocks.

        torch's CPU transposed convolution scatters its columns one sample at a time; this is
        the same sum in a different order, about 4x faster for NVIDIA's 1024/256 upsampler.
        """
        c = self.config
        hop = c.hop_length
        weight, bias = self.upsample.weight, self.upsample.bias
        n_in, n_out, kernel = weight.shape
        taps = -(-kernel // hop)
        # One `(n_in, n_out * hop)` matrix per tap, padded to whole taps.
        weight = (F.pad(weight, (0, taps * hop - kernel)).view(n_in, n_out, taps, hop)
                  .permute(2, 0, 1, 3).reshape(taps, n_in, n_out * hop))
        batch, _, frames = mel.shape
        n_blocks = -(-groups // c.groups_per_frame)
        # Block b of the output, laid out (band, sample), sums frame b - k through tap k.
        blocks = bias.view(1, 1, n_out, 1).expand(batch, n_blocks, n_out, hop).contiguous()
        rows = blocks.view(batch, n_blocks, n_out * hop)
        frames_first = mel.transpose(1, 2)
        for tap in range(min(taps, n_blocks)):
            reach = min(frames, n_blocks - tap)
            rows[:, tap:tap + reach].baddbmm_(frames_first[:, :reach], weight[tap].expand(batch, -1, -1))
        # Channel order (band, position within group) matches NVIDIA's unfold. Stored time-major,
        # the layout that the conditioners' channels-last inference reads without a copy.
        unfolded = blocks.view(batch, n_blocks, n_out, c.groups_per_frame, c.n_group).transpose(2, 3)
        time_major = unfolded.reshape(batch, n_blocks * c.groups_per_frame, n_out * c.n_group)
        return time_major[:, :groups].transpose(1, 2)


def fuse(flow: WaveFlow) -> FusedWaveFlow:
    """An inference-only copy of `flow` that shares its parameters, so it follows their later
    updates. Move the two together (`Vocoder` holds both as submodules)."""
    shared = {id(tensor): tensor for tensor in itertools.chain(flow.parameters(), flow.buffers())}
    fused = copy.deepcopy(flow, shared)
    # The same modules and state with the fast overrides; nothing of the copy is rebuilt.
    fused.__class__ = FusedWaveFlow
    matmul = flow.config.family != "waveglow"
    fused.WN = nn.ModuleList(FusedConditioner(conditioner, matmul) if isinstance(conditioner, GatedConditioner)
                             else conditioner for conditioner in fused.WN)
    fused.convinv = nn.ModuleList(CachedInverse1x1Conv(conv) for conv in fused.convinv)
    return fused

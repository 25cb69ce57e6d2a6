"""WaveNet-like conditioners that give each affine coupling its scale and shift.

Both families share the gated tanh/sigmoid stack with residual and skip paths; the
efficient family swaps each dilated convolution for a depthwise-separable one.
Hidden states are re-masked after every layer that mixes time, so padding never
leaks into valid positions of a batched input.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.config import FlowConfig


class DepthwiseSeparableConv(nn.Module):
    """Dilated depthwise convolution followed by a pointwise projection `(B, C, T) -> (B, out, T)`."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                                   padding=padding, groups=channels)
        self.pointwise = nn.Conv1d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def gated_activation(x: torch.Tensor, channels: int) -> torch.Tensor:
    return torch.tanh(x[:, :channels]) * torch.sigmoid(x[:, channels:])


def residual_skip_stack(hidden: torch.Tensor, mask: torch.Tensor | None, in_layers: nn.ModuleList,
                        res_skip_layers: nn.ModuleList,
                        activation: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """WaveNet's stack from the first hidden state `(B, C, G)` to the sum of the skip outputs:
    layer i's `activation(i, in_layer(hidden))` feeds a residual (all but the last layer) and a
    skip output; hidden states are re-masked after every residual update."""
    channels = hidden.shape[1]
    if mask is not None:
        hidden = hidden * mask
    skip = None
    for i, (in_layer, res_skip_layer) in enumerate(zip(in_layers, res_skip_layers)):
        res_skip = res_skip_layer(activation(i, in_layer(hidden)))
        if i < len(in_layers) - 1:
            hidden = hidden + res_skip[:, :channels]
            if mask is not None:
                hidden = hidden * mask
            res_skip = res_skip[:, channels:]
        skip = res_skip if skip is None else skip + res_skip
    return skip


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


class GatedConditioner(nn.Module):
    """Map the kept half `(B, n_half, G)` and conditioning `(B, C_cond, G)` to `(B, 2 n_half, G)`.

    The output holds the shift in its first half and the log-scale in its second, as in
    NVIDIA's WN, whose parameter names this module keeps.
    """

    def __init__(self, n_half: int, cond_channels: int, config: FlowConfig) -> None:
        super().__init__()
        channels, layers = config.n_channels, config.n_layers
        self.n_channels = channels
        self.n_layers = layers
        # Inference runs 1x1 convolutions as batched matmuls for the efficient family: on 2 CPU
        # cores that is 1.1-3.3x faster at its sizes (128 channels). At NVIDIA's sizes (640 -> 512
        # and 256 -> 256 channels) oneDNN's channels-last convolution is the faster one.
        self.matmul_projections = config.family != "waveglow"
        self.start = nn.Conv1d(n_half, channels, 1)
        self.cond_layer = nn.Conv1d(cond_channels, 2 * channels * layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(layers):
            dilation = config.dilation(i)
            if config.family != "waveglow":
                layer: nn.Module = DepthwiseSeparableConv(channels, 2 * channels, config.kernel_size, dilation)
            else:
                layer = nn.Conv1d(channels, 2 * channels, config.kernel_size, dilation=dilation,
                                  padding=(config.kernel_size - 1) // 2 * dilation)
            self.in_layers.append(layer)
            # The last layer only feeds the skip path.
            res_skip_channels = 2 * channels if i < layers - 1 else channels
            self.res_skip_layers.append(nn.Conv1d(channels, res_skip_channels, 1))
        # A zero last layer makes every coupling start as the identity, which keeps early
        # training stable.
        self.end = nn.Conv1d(channels, 2 * n_half, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._forward_inference(x, cond, mask)
        c = self.n_channels
        cond = self.cond_layer(cond)
        skip = residual_skip_stack(self.start(x), mask, self.in_layers, self.res_skip_layers, lambda i, layer_out:
                                   gated_activation(layer_out + cond[:, 2 * c * i: 2 * c * (i + 1)], c))
        return self.end(skip)

    def _forward_inference(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`forward` without autograd, rearranged for speed; equal to it up to float rounding.

        Each layer projects only its own slice of the conditioning (measurably faster than one
        projection for all layers) and updates in place. `end` is linear, so where it narrows
        (2 n_half < n_channels, NVIDIA's layout) it folds into every layer's skip projection,
        and the skip sum disappears. NVIDIA-sized plain convolutions run on channels-last
        tensors, which spares oneDNN a reorder of every input and output (about 7% of the
        `waveglow` preset's time on 2 cores).
        """
        c, last = self.n_channels, self.n_layers - 1
        plain = not self.matmul_projections
        if plain:
            x, cond = _to_channels_last(x), _to_channels_last(cond)
            mask = None if mask is None else mask.unsqueeze(2)
        project = _conv_channels_last if plain else _matmul_1x1
        cond_weight, cond_bias = self.cond_layer.weight, self.cond_layer.bias
        fold_end = self.end.out_channels < c
        end_weight, out_bias = self.end.weight.squeeze(2), self.end.bias
        hidden = project(x, self.start.weight, self.start.bias)
        if mask is not None:
            hidden.mul_(mask)
        out = None
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
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
            out = project(out, self.end.weight, self.end.bias)
        return out.squeeze(2) if plain else out

    def _first_layer_through_start(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Layer 0's convolution of `start(x)` (masked), folded through the 1x1 `start`.

        Its input is then x and the validity of each position (which carries start's bias, and
        is zero in the padding like masked hidden states): n_half + 1 channels, not n_channels.
        """
        layer = self.in_layers[0]
        valid = torch.ones_like(x[:, :1]) if mask is None else mask
        inputs = torch.cat([x if mask is None else x * mask, valid], dim=1).contiguous(memory_format=torch.channels_last)
        weight = torch.cat([torch.einsum("ocj,ci->oij", layer.weight, self.start.weight.squeeze(2)),
                            torch.einsum("ocj,c->oj", layer.weight, self.start.bias).unsqueeze(1)], dim=1)
        return _conv_channels_last(inputs, weight, layer.bias, layer.padding[0], layer.dilation[0])

    def weight_normed_convs(self) -> list[nn.Conv1d]:
        """The convolutions that train under weight normalisation (all but `end`)."""
        convs = [self.start, self.cond_layer, *self.res_skip_layers]
        for layer in self.in_layers:
            convs += [layer.depthwise, layer.pointwise] if isinstance(layer, DepthwiseSeparableConv) else [layer]
        return convs


class SymmetricConditioner(nn.Module):
    """A conditioner whose coupling is odd in the audio: shift(-x) = -shift(x) and
    log_scale(-x) = log_scale(x), for `(B, n_half, G)` and conditioning `(B, C_cond, G)`.

    With every coupling so and linear layers around them, the flow is odd, so p(x | mel) =
    p(-x | mel): a sample's mean is zero and z = 0 decodes to silence. A fixed-grid flow's
    deterministic part repeats with the group grid (a buzz at sample_rate / n_group); this
    leaves it none. The audio path has no biases and only odd activations (tanh); the
    conditioning enters through sigmoid gates, and the log-scale reads |skip|, which is even.
    """

    def __init__(self, n_half: int, cond_channels: int, config: FlowConfig) -> None:
        super().__init__()
        channels, layers = config.n_channels, config.n_layers
        self.n_channels = channels
        self.n_layers = layers
        self.start = nn.Conv1d(n_half, channels, 1, bias=False)
        self.cond_layer = nn.Conv1d(cond_channels, channels * layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(layers):
            layer = DepthwiseSeparableConv(channels, channels, config.kernel_size, config.dilation(i))
            layer.depthwise.bias = layer.pointwise.bias = None
            self.in_layers.append(layer)
            self.res_skip_layers.append(nn.Conv1d(channels, 2 * channels if i < layers - 1 else channels, 1,
                                                  bias=False))
        # Zero last layers make every coupling start as the identity.
        self.end_shift = nn.Conv1d(channels, n_half, 1, bias=False)
        self.end_log_scale = nn.Conv1d(channels, n_half, 1)
        for end in (self.end_shift, self.end_log_scale):
            nn.init.zeros_(end.weight)
        nn.init.zeros_(self.end_log_scale.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        c = self.n_channels
        gates = torch.sigmoid(self.cond_layer(cond))
        skip = residual_skip_stack(self.start(x), mask, self.in_layers, self.res_skip_layers, lambda i, layer_out:
                                   torch.tanh(layer_out) * gates[:, c * i: c * (i + 1)])
        return torch.cat([self.end_shift(skip), self.end_log_scale(skip.abs())], dim=1)

    def weight_normed_convs(self) -> list[nn.Conv1d]:
        """The convolutions that train under weight normalisation (all but the ends)."""
        convs = [self.start, self.cond_layer, *self.res_skip_layers]
        for layer in self.in_layers:
            convs += [layer.depthwise, layer.pointwise]
        return convs

"""WaveNet-like conditioners that give each affine coupling its scale and shift.

Both families share the gated tanh/sigmoid stack with residual and skip paths; the
efficient family swaps each dilated convolution for a depthwise-separable one.
Hidden states are re-masked after every layer that mixes time, so padding never
leaks into valid positions of a batched input. These are the reference modules that training
runs; `vocoder.fused` rearranges the gated conditioner for inference.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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
        c = self.n_channels
        cond = self.cond_layer(cond)
        skip = residual_skip_stack(self.start(x), mask, self.in_layers, self.res_skip_layers, lambda i, layer_out:
                                   gated_activation(layer_out + cond[:, 2 * c * i: 2 * c * (i + 1)], c))
        return self.end(skip)

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

"""WaveNet-like conditioners that give each affine coupling its scale and shift.

Both families share the gated tanh/sigmoid stack with residual and skip paths; the
efficient family swaps each dilated convolution for a depthwise-separable one.
Hidden states are re-masked after every layer that mixes time, so padding never
leaks into valid positions of a batched input.
"""
from __future__ import annotations

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
            if config.family == "efficient":
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
        hidden = self.start(x)
        if mask is not None:
            hidden = hidden * mask
        cond = self.cond_layer(cond)
        skip = None
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            acts = gated_activation(in_layer(hidden) + cond[:, 2 * c * i: 2 * c * (i + 1)], c)
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                hidden = hidden + res_skip[:, :c]
                if mask is not None:
                    hidden = hidden * mask
                res_skip = res_skip[:, c:]
            skip = res_skip if skip is None else skip + res_skip
        return self.end(skip)

    def weight_normed_convs(self) -> list[nn.Conv1d]:
        """The convolutions that train under weight normalisation (all but `end`)."""
        convs = [self.start, self.cond_layer, *self.res_skip_layers]
        for layer in self.in_layers:
            convs += [layer.depthwise, layer.pointwise] if isinstance(layer, DepthwiseSeparableConv) else [layer]
        return convs

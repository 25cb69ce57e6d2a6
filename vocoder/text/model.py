"""Glow-TTS-style text-to-mel flow: a text encoder gives every token a Gaussian prior over
mel channels and a duration, and an invertible flow maps mel frames to latents under
that prior. Trained by exact likelihood, with monotonic alignment search for durations."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.conditioner import gated_activation
from vocoder.errors import ConfigError, VocoderError
from vocoder.flow import Invertible1x1Conv, length_mask
from vocoder.mel import MelConfig
from vocoder.serialization import DictConfig
from vocoder.text.alignment import monotonic_alignment
from vocoder.text.limits import check_speech_frames
from vocoder.text.normalize import normalize_text
from vocoder.text.symbols import PAD_ID, SYMBOLS, TextError, text_to_ids

BATCH_FIELDS = ("tokens", "token_lengths", "mels", "mel_lengths")


@dataclass(frozen=True)
class AcousticConfig(DictConfig):
    """Shape of the text-to-mel flow.

    Encoder: an embedding of `n_symbols` ids, `n_conv_layers` residual convolutions and
    `n_attention_layers` self-attention layers of width `hidden_channels`. The duration
    predictor has two convolutions of `duration_channels`. The decoder squeezes
    `n_squeeze` frames into channels and stacks `n_blocks` of actnorm, invertible 1x1
    convolution and affine coupling; each coupling network has `decoder_layers` gated
    convolutions of `decoder_channels`, dilation `decoder_dilation_rate ** layer`.
    """

    n_symbols: int = len(SYMBOLS)
    n_mels: int = 80
    hidden_channels: int = 192
    n_conv_layers: int = 3
    conv_kernel_size: int = 5
    n_attention_layers: int = 4
    n_heads: int = 2
    filter_channels: int = 768
    dropout: float = 0.1
    duration_channels: int = 256
    duration_kernel_size: int = 3
    n_squeeze: int = 2
    n_blocks: int = 12
    decoder_layers: int = 4
    decoder_channels: int = 192
    decoder_kernel_size: int = 5
    decoder_dilation_rate: int = 1

    def __post_init__(self) -> None:
        problems = []
        positive = ("n_symbols", "n_mels", "hidden_channels", "n_heads", "filter_channels",
                    "duration_channels", "n_squeeze", "n_blocks", "decoder_layers",
                    "decoder_channels", "decoder_dilation_rate")
        problems += [f"{name} must be positive, got {getattr(self, name)}"
                     for name in positive if getattr(self, name) <= 0]
        problems += [f"{name} must be zero or more, got {getattr(self, name)}"
                     for name in ("n_conv_layers", "n_attention_layers") if getattr(self, name) < 0]
        problems += [f"{name} must be odd, got {getattr(self, name)}"
                     for name in ("conv_kernel_size", "duration_kernel_size", "decoder_kernel_size")
                     if getattr(self, name) % 2 == 0]
        if self.hidden_channels % max(self.n_heads, 1):
            problems.append(f"n_heads {self.n_heads} must divide hidden_channels {self.hidden_channels}")
        if (self.n_mels * self.n_squeeze) % 2:
            problems.append("n_mels * n_squeeze must be even so that couplings split the channels in half")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid acoustic config: " + "; ".join(problems))

    def check_mel(self, mel: MelConfig) -> None:
        """Refuse a mel convention other than the one this model makes."""
        if self.n_mels != mel.n_mels:
            raise ConfigError(f"model makes {self.n_mels} mel bands, mel config gives {mel.n_mels}")


def prepare_text(text: str) -> tuple[str, list[int]]:
    """`text` after `normalize_text`, and its symbol ids; `TextError` when a character is
    unsupported or nothing speakable is left."""
    normalized = normalize_text(text)
    ids = text_to_ids(normalized)
    if not ids:
        raise TextError("text is empty after normalization")
    return normalized, ids


def check_controls(noise_scale: float, length_scale: float) -> None:
    """Reject sampling controls no model can honour."""
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise VocoderError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
    if not (math.isfinite(length_scale) and length_scale > 0):
        raise VocoderError(f"length_scale must be a finite number > 0, got {length_scale}")


# -- text side ---------------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """`conv -> ReLU -> LayerNorm -> dropout` over `(B, C_in, N) -> (B, C_out, N)`, masked."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x * mask))
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return self.dropout(y) * mask


def sinusoids(length: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal position codes `(length, channels)`."""
    positions = torch.arange(length, device=like.device, dtype=like.dtype)[:, None]
    rates = torch.exp(torch.arange(0, channels, 2, device=like.device, dtype=like.dtype)
                      * (-math.log(10000.0) / channels))
    codes = torch.zeros(length, channels, device=like.device, dtype=like.dtype)
    codes[:, 0::2] = torch.sin(positions * rates)
    codes[:, 1::2] = torch.cos(positions * rates[: channels // 2])
    return codes


class TextEncoder(nn.Module):
    """Token ids `(B, N)` to hidden states `(B, H, N)`, zero on padding."""

    def __init__(self, config: AcousticConfig) -> None:
        super().__init__()
        hidden = config.hidden_channels
        self.embedding = nn.Embedding(config.n_symbols, hidden, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(ConvBlock(hidden, hidden, config.conv_kernel_size, config.dropout)
                                   for _ in range(config.n_conv_layers))
        self.attention = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, config.n_heads, config.filter_channels, config.dropout,
                                       batch_first=True, norm_first=True)
            for _ in range(config.n_attention_layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens).transpose(1, 2) * mask
        for conv in self.convs:
            x = x + conv(x, mask)
        # Attention alone is blind to order; the convolutions only see a few neighbours.
        x = x.transpose(1, 2) + sinusoids(x.shape[2], x.shape[1], x)
        padding = mask[:, 0] == 0
        for layer in self.attention:
            x = layer(x, src_key_padding_mask=padding)
        return self.norm(x).transpose(1, 2) * mask


class DurationPredictor(nn.Module):
    """Log frames per token `(B, 1, N)` from encoder states `(B, H, N)`."""

    def __init__(self, config: AcousticConfig) -> None:
        super().__init__()
        channels, kernel = config.duration_channels, config.duration_kernel_size
        self.blocks = nn.ModuleList([ConvBlock(config.hidden_channels, channels, kernel, config.dropout),
                                     ConvBlock(channels, channels, kernel, config.dropout)])
        self.proj = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(x) * mask


# -- mel side: the invertible decoder ----------------------------------------------------------

class ActNorm(nn.Module):
    """Learned per-channel affine map `(B, C, T) -> (B, C, T)` that starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.bias + torch.exp(self.log_scale) * x) * mask, self.log_scale.sum() * valid

    def reverse(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (y - self.bias) * torch.exp(-self.log_scale) * mask


class CouplingNetwork(nn.Module):
    """Shift and log-scale `(B, 2 C_half, T)` from the kept half `(B, C_half, T)`: gated
    convolutions with residual connections.

    `vocoder.conditioner.GatedConditioner` needs a conditioning input; this decoder has
    none (conditioning it on aligned text would make the alignment depend on itself).
    """

    def __init__(self, half: int, config: AcousticConfig) -> None:
        super().__init__()
        channels, kernel = config.decoder_channels, config.decoder_kernel_size
        self.channels = channels
        self.start = nn.Conv1d(half, channels, 1)
        self.layers = nn.ModuleList()
        self.residuals = nn.ModuleList()
        for i in range(config.decoder_layers):
            dilation = config.decoder_dilation_rate ** i
            self.layers.append(nn.Conv1d(channels, 2 * channels, kernel, dilation=dilation,
                                         padding=kernel // 2 * dilation))
            self.residuals.append(nn.Conv1d(channels, channels, 1))
        # A zero last layer makes every coupling start as the identity.
        self.end = nn.Conv1d(channels, 2 * half, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.start(x) * mask
        for layer, residual in zip(self.layers, self.residuals):
            hidden = (hidden + residual(gated_activation(layer(hidden), self.channels))) * mask
        return self.end(hidden)


class AffineCoupling(nn.Module):
    """Affine coupling `(B, C, T) -> (B, C, T)`: the second half is scaled and shifted by
    functions of the first."""

    def __init__(self, channels: int, config: AcousticConfig) -> None:
        super().__init__()
        self.net = CouplingNetwork(channels // 2, config)

    def _shift_log_scale(self, kept: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self.net(kept, mask).chunk(2, dim=1)
        return shift * mask, log_scale * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, changed = x.chunk(2, dim=1)
        shift, log_scale = self._shift_log_scale(kept, mask)
        changed = (shift + torch.exp(log_scale) * changed) * mask
        return torch.cat([kept, changed], dim=1), log_scale.sum(dim=(1, 2))

    def reverse(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kept, changed = y.chunk(2, dim=1)
        shift, log_scale = self._shift_log_scale(kept, mask)
        return torch.cat([kept, (changed - shift) * torch.exp(-log_scale) * mask], dim=1)


class MelFlow(nn.Module):
    """Invertible map between mels `(B, n_mels, T)` and latents of the same shape.

    `T` and every valid length must be multiples of `n_squeeze`; frames past an item's
    length are padding and come out as zeros.
    """

    def __init__(self, config: AcousticConfig) -> None:
        super().__init__()
        self.n_squeeze = config.n_squeeze
        channels = config.n_mels * config.n_squeeze
        self.actnorms = nn.ModuleList(ActNorm(channels) for _ in range(config.n_blocks))
        self.convs = nn.ModuleList(Invertible1x1Conv(channels) for _ in range(config.n_blocks))
        self.couplings = nn.ModuleList(AffineCoupling(channels, config) for _ in range(config.n_blocks))

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C, T)` to `(B, C * n_squeeze, T / n_squeeze)`, neighbouring frames side by side."""
        batch, channels, frames = x.shape
        s = self.n_squeeze
        return x.reshape(batch, channels, frames // s, s).transpose(2, 3).reshape(batch, channels * s, frames // s)

    def unsqueeze(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, groups = x.shape
        s = self.n_squeeze
        return x.reshape(batch, channels // s, s, groups).transpose(2, 3).reshape(batch, channels // s, groups * s)

    def _squeezed_mask(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.n_squeeze
        if x.shape[2] % s or bool((lengths % s).any()):
            raise VocoderError(f"frame counts {x.shape[2]} / {lengths.tolist()} are not multiples of {s}")
        groups = torch.div(lengths, s, rounding_mode="floor")
        return length_mask(groups, x.shape[2] // s, x), groups.to(device=x.device, dtype=x.dtype)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel `(B, n_mels, T)` to latent `(B, n_mels, T)` and log|det J| `(B,)`."""
        mask, valid = self._squeezed_mask(mel, lengths)
        x = self.squeeze(mel) * mask
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for actnorm, conv, coupling in zip(self.actnorms, self.convs, self.couplings):
            x, term = actnorm(x, mask, valid)
            log_det = log_det + term
            x = conv(x)
            log_det = log_det + conv.log_abs_det() * valid
            x, term = coupling(x, mask)
            log_det = log_det + term
        return self.unsqueeze(x), log_det

    def reverse(self, z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Latent `(B, n_mels, T)` back to mel `(B, n_mels, T)`."""
        mask, _ = self._squeezed_mask(z, lengths)
        x = self.squeeze(z) * mask
        for actnorm, conv, coupling in zip(reversed(self.actnorms), reversed(self.convs), reversed(self.couplings)):
            x = coupling.reverse(x, mask)
            x = conv.reverse(x)
            x = actnorm.reverse(x, mask)
        return self.unsqueeze(x)


# -- the whole model -------------------------------------------------------------------------------

def token_frame_log_likelihood(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z[:, :, j]; mean[:, :, i], exp(log_std[:, :, i])) summed over channels, as `(B, N, T)`
    for latents `(B, C, T)` and per-token priors `(B, C, N)`."""
    precision = torch.exp(-2 * log_std)
    quadratic = (torch.matmul(precision.transpose(1, 2), z * z)
                 - 2 * torch.matmul((mean * precision).transpose(1, 2), z)
                 + (mean * mean * precision).sum(dim=1)[:, :, None])
    constant = -log_std.sum(dim=1)[:, :, None] - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return constant - 0.5 * quadratic


def path_from_durations(durations: torch.Tensor, frames: int) -> torch.Tensor:
    """Hard alignment `(B, N, frames)` giving token i `durations[b, i]` consecutive frames."""
    ends = torch.cumsum(durations, dim=1)
    starts = ends - durations
    positions = torch.arange(frames, device=durations.device)[None, None, :]
    return ((positions >= starts[:, :, None]) & (positions < ends[:, :, None])).float()


class TextToMel(nn.Module):
    """Text-to-mel flow. Tokens `(B, N)`, mels `(B, n_mels, T)` in the project's log-mel
    convention (`vocoder.mel`), latents of the mel's shape."""

    def __init__(self, config: AcousticConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TextEncoder(config)
        self.prior = nn.Conv1d(config.hidden_channels, 2 * config.n_mels, 1)
        self.duration = DurationPredictor(config)
        self.decoder = MelFlow(config)

    @property
    def device(self) -> torch.device:
        return self.prior.weight.device

    def encode(self, tokens: torch.Tensor, token_lengths: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token prior mean and log-std `(B, n_mels, N)`, predicted log-durations
        `(B, 1, N)` and the token mask `(B, 1, N)`."""
        if tokens.dim() != 2:
            raise VocoderError(f"tokens must have shape (B, N), got {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.config.n_symbols:
            raise VocoderError(f"token ids must lie in 0..{self.config.n_symbols - 1}")
        mask = length_mask(token_lengths, tokens.shape[1], self.prior.weight)
        hidden = self.encoder(tokens, mask)
        mean, log_std = (self.prior(hidden) * mask).chunk(2, dim=1)
        # Durations must not pull the encoder towards whatever makes them easy to predict.
        log_durations = self.duration(hidden.detach(), mask)
        return mean, log_std, log_durations, mask

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss of a padded batch with fields `tokens` `(B, N)` (pad id 0),
        `token_lengths` `(B,)`, `mels` `(B, n_mels, T)` and `mel_lengths` `(B,)`.

        Returns scalars: `nll` (negative log-likelihood of the mels, nats per mel value),
        `duration` (mean squared error of the log-durations against the alignment) and
        `loss`, their sum, which is what is optimised. Frames that do not fill a whole
        squeeze group at the end of an item are left out.
        """
        missing = [name for name in BATCH_FIELDS if name not in batch]
        if missing:
            raise VocoderError(f"batch lacks fields {missing}; a batch needs {list(BATCH_FIELDS)}")
        device = self.device
        tokens, token_lengths, mels, mel_lengths = (batch[name].to(device) for name in BATCH_FIELDS)
        if mels.dim() != 3 or mels.shape[1] != self.config.n_mels:
            raise VocoderError(f"mels must have shape (B, {self.config.n_mels}, T), got {tuple(mels.shape)}")
        if int(mel_lengths.max()) > mels.shape[2] or int(token_lengths.max()) > tokens.shape[1]:
            raise VocoderError("a length in the batch exceeds its padded tensor")
        s = self.config.n_squeeze
        mel_lengths = mel_lengths - mel_lengths % s
        frames = int(mel_lengths.max())
        mels = mels[:, :, :frames]
        frame_mask = length_mask(mel_lengths, frames, mels)

        mean, log_std, log_durations, token_mask = self.encode(tokens, token_lengths)
        z, log_det = self.decoder(mels, mel_lengths)
        with torch.no_grad():
            path = monotonic_alignment(token_frame_log_likelihood(z, mean, log_std), token_lengths, mel_lengths)
        frame_mean = torch.matmul(mean, path)
        frame_log_std = torch.matmul(log_std, path)
        values = mel_lengths.sum() * self.config.n_mels
        squared = torch.exp(-2 * frame_log_std) * (z - frame_mean) ** 2
        nll = (((frame_log_std + 0.5 * squared) * frame_mask).sum() - log_det.sum()) / values \
            + 0.5 * math.log(2 * math.pi)

        target = torch.log(path.sum(dim=2).clamp_min(1))[:, None, :] * token_mask
        duration = ((log_durations - target) ** 2).sum() / token_lengths.sum()
        return {"loss": nll + duration, "nll": nll, "duration": duration}

    def mel_to_latent(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mel `(B, n_mels, T)` to its latent `(B, n_mels, T)`: the decoder run forwards, for
        editing a latent and decoding it again with `latent_to_mel`."""
        return self.decoder(mel, self._full_lengths(mel, lengths))[0]

    def latent_to_mel(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Latent `(B, n_mels, T)` to mel `(B, n_mels, T)`: the exact inverse of `mel_to_latent`."""
        return self.decoder.reverse(z, self._full_lengths(z, lengths))

    @staticmethod
    def _full_lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:
            return torch.full((x.shape[0],), x.shape[-1], device=x.device)
        return lengths.to(x.device)

    @torch.no_grad()
    def infer(self, tokens: torch.Tensor, token_lengths: torch.Tensor | None = None, noise_scale: float = 0.667,
              length_scale: float = 1.0, generator: torch.Generator | None = None, max_frames: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(B, N)` to mels `(B, n_mels, T)` and their lengths `(B,)` in frames.

        `noise_scale` is the temperature of the prior sample (0: its mean); `length_scale`
        multiplies every predicted duration (2: half as fast, same pitch). Lengths are
        rounded up to a multiple of `n_squeeze` by lengthening each item's last token.
        `SpeechTooLong` when an item would exceed `max_frames`: before the encoder if it has
        more tokens than that (each lasts a frame or more), else once the durations are known,
        before the alignment `(B, N, T)` and the mel are built.
        """
        check_controls(noise_scale, length_scale)
        tokens = tokens.to(self.device)
        token_lengths = self._full_lengths(tokens, token_lengths)
        check_speech_frames(int(token_lengths.max()), max_frames, estimated=True)
        mean, log_std, log_durations, token_mask = self.encode(tokens, token_lengths)
        durations = (torch.ceil(torch.exp(log_durations) * length_scale) * token_mask)[:, 0].long()
        shortfall = -durations.sum(dim=1) % self.config.n_squeeze
        items = torch.arange(tokens.shape[0], device=tokens.device)
        durations[items, token_lengths - 1] += shortfall
        mel_lengths = durations.sum(dim=1)
        check_speech_frames(int(mel_lengths.max()), max_frames, estimated=False)
        path = path_from_durations(durations, int(mel_lengths.max()))
        frame_mean = torch.matmul(mean, path)
        frame_std = torch.exp(torch.matmul(log_std, path))
        noise = torch.randn(frame_mean.shape, generator=generator).to(frame_mean)
        frame_mask = length_mask(mel_lengths, path.shape[2], frame_mean)
        z = (frame_mean + frame_std * noise * noise_scale) * frame_mask
        return self.decoder.reverse(z, mel_lengths), mel_lengths

    def synthesize(self, text: str, noise_scale: float = 0.667, length_scale: float = 1.0,
                   seed: int | None = None, max_frames: int | None = None) -> torch.Tensor:
        """Mel `(n_mels, T)` for raw English `text` (normalized here); `seed` makes the
        prior sample reproducible; `max_frames` as in `infer`."""
        _, ids = prepare_text(text)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        mel, _ = self.infer(torch.tensor([ids]), noise_scale=noise_scale, length_scale=length_scale,
                            generator=generator, max_frames=max_frames)
        return mel[0]

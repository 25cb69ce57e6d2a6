"""Flow-based neural vocoder: a WaveGlow-style normalizing flow conditioned on log-mel
spectrograms, with exact likelihood, exact inversion and one shared mel front-end."""
from vocoder.audio import load_audio
from vocoder.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vocoder.config import PRESETS, FlowConfig, preset
from vocoder.errors import AudioError, CheckpointError, MelError, VocoderError
from vocoder.flow import WaveFlow
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig, MelSpectrogram

__all__ = [
    "AudioError", "Checkpoint", "CheckpointError", "FlowConfig", "MelConfig", "MelError",
    "MelSpectrogram", "PRESETS", "Vocoder", "VocoderError", "WaveFlow", "load_audio",
    "load_checkpoint", "preset", "save_checkpoint",
]
__version__ = "0.1.0"

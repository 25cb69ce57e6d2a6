"""Quality evaluation of vocoded speech: objective metrics, an offline ASR check
and the Griffin-Lim baseline. Needs the evaluation packages (pesq, pystoi,
speechmos with onnxruntime, pocketsphinx) on top of the core ones."""
from vocoder.evaluation.asr import transcribe, word_error_rate
from vocoder.evaluation.griffin_lim import griffin_lim_from_mel
from vocoder.evaluation.metrics import (
    dnsmos,
    f0_metrics,
    log_mel_l1,
    multi_resolution_stft_distance,
    pesq_wb,
    stoi,
    trim_to_shortest,
)

__all__ = [
    "dnsmos",
    "f0_metrics",
    "griffin_lim_from_mel",
    "log_mel_l1",
    "multi_resolution_stft_distance",
    "pesq_wb",
    "stoi",
    "transcribe",
    "trim_to_shortest",
    "word_error_rate",
]

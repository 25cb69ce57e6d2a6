"""Where training metrics go: TensorBoard, `metrics.jsonl` (one JSON object per logged
step, for plotting curves) and the console. Only rank 0 constructs one."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("training")

METRICS_FILE = "metrics.jsonl"


def setup_console(is_main: bool) -> None:
    """Log lines to stderr on rank 0 only; other ranks report warnings and errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to `step`, so a resumed run does not repeat steps in the curves."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    staging = path.with_name(path.name + ".tmp")
    staging.write_text("".join(f"{line}\n" for line in kept))
    os.replace(staging, path)


class MetricsWriter:
    """Appends scalars to TensorBoard and `metrics.jsonl`; audio and images to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        # purge_step hides events a crashed run wrote past the checkpoint we resume from.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        self.images = importlib.util.find_spec("PIL") is not None
        if not self.images:
            log.info("Pillow is not installed: mel images are left out of TensorBoard")

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def audio(self, tag: str, audio: torch.Tensor, step: int, sample_rate: int) -> None:
        """Mono audio `(L,)`."""
        self.writer.add_audio(tag, audio.detach().float().clamp(-1, 1).cpu().unsqueeze(0), step, sample_rate)

    def mel_image(self, tag: str, mel: torch.Tensor, step: int) -> None:
        """Log-mel `(n_mels, T)` as a grey image, low bands at the bottom."""
        if not self.images:
            return
        mel = mel.detach().float().cpu()
        scaled = (mel - mel.min()) / (mel.max() - mel.min()).clamp(min=1e-5)
        self.writer.add_image(tag, scaled.flip(0).unsqueeze(0), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

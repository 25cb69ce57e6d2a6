"""Writers of an `EvalReport`: results.json (everything), results.md (mean and per-clip
tables) and spectrograms.png (log-mels of one clip from every system)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vocoder.evaluation.harness import METRICS, SYSTEMS, EvalReport, Scores

JSON_FILE = "results.json"
MARKDOWN_FILE = "results.md"
FIGURE_FILE = "spectrograms.png"

SYSTEM_LABELS = {"ground_truth": "ground truth", "model": "model", "griffin_lim": "Griffin-Lim"}


def _label(report: EvalReport, system: str) -> str:
    if system == "model" and report.info["model"]["random_init"]:
        return "model (RANDOM INIT)"
    if system == "griffin_lim":
        return f"Griffin-Lim ({report.info['settings']['griffin_lim_iters']} it.)"
    return SYSTEM_LABELS[system]


def to_dict(report: EvalReport) -> dict[str, Any]:
    """The JSON document: run information, metric definitions, means and per-clip scores."""
    return {
        **report.info,
        "systems": list(SYSTEMS),
        "metrics": {metric.key: {"label": metric.label, "higher_is_better": metric.higher_is_better}
                    for metric in METRICS},
        "means": report.means(),
        "clips": [
            {"id": clip.id, "seconds": round(clip.seconds, 3), "text": clip.text,
             "scores": clip.scores, "transcripts": clip.transcripts}
            for clip in report.clips
        ],
    }


def write_json(report: EvalReport, path: str | Path) -> Path:
    path = Path(path)
    # allow_nan=False: undefined values are already None, so a NaN here is a bug to surface.
    path.write_text(json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n")
    return path


def _format(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _columns() -> tuple[str, str]:
    """The metric columns' header cells and alignment cells."""
    labels = " | ".join(f"{metric.label} {'↑' if metric.higher_is_better else '↓'}" for metric in METRICS)
    return labels, "|".join("---:" for _ in METRICS)


def _row(first: str, scores: Scores) -> str:
    return f"| {first} | " + " | ".join(_format(scores[metric.key], metric.digits) for metric in METRICS) + " |"


def means_table(report: EvalReport) -> str:
    """Markdown table of mean metrics: one row per system."""
    labels, rule = _columns()
    means = report.means()
    rows = [_row(_label(report, system), means[system]) for system in SYSTEMS]
    return "\n".join([f"| System | {labels} |", f"|---|{rule}|", *rows])


def clips_table(report: EvalReport) -> str:
    """Markdown table of every clip's metrics: one row per clip and system."""
    labels, rule = _columns()
    rows = [_row(f"{clip.id} | {_label(report, system)}", clip.scores[system])
            for clip in report.clips for system in SYSTEMS]
    return "\n".join([f"| Clip | System | {labels} |", f"|---|---|{rule}|", *rows])


def _checkpoint_text(checkpoint: dict[str, Any] | None) -> str:
    if not checkpoint:
        return "n/a"
    if checkpoint.get("path") is None:
        return "none (randomly initialised model)"
    return f"`{checkpoint['path']}` (sha256 {checkpoint['sha256'][:12]})"


def markdown(report: EvalReport) -> str:
    info = report.info
    machine = info["machine"]
    settings = info["settings"]
    lines = [
        "# Copy-synthesis evaluation",
        "",
        f"- command: `{info.get('command', 'n/a')}`",
        f"- checkpoint: {_checkpoint_text(info.get('checkpoint'))}",
        f"- date: {info['date']}",
        f"- machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"device {machine['device']}{', ' + machine['gpu'] if 'gpu' in machine else ''}",
        f"- clips: {len(report.clips)} ({sum(clip.seconds for clip in report.clips):.1f} s of audio); "
        f"sigma {settings['sigma']}, seed {settings['seed']}",
        "",
        "Paired metrics and speed are n/a for the ground truth; RTF is audio seconds per second "
        "of synthesis. ASR WER is PocketSphinx against the normalized transcript, so compare it "
        "with the ground-truth row.",
        "",
        "## Means over the clips",
        "",
        means_table(report),
        "",
        "## Per clip",
        "",
        clips_table(report),
        "",
    ]
    return "\n".join(lines)


def write_markdown(report: EvalReport, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(markdown(report))
    return path


def plot_spectrograms(report: EvalReport, path: str | Path, sample_rate: int, hop_length: int) -> Path:
    """One log-mel panel per system for `report.example_clip`, on a shared colour scale."""
    mels = [report.example_mels[system] for system in SYSTEMS]
    low = min(float(np.min(mel)) for mel in mels)
    high = max(float(np.max(mel)) for mel in mels)
    figure = Figure(figsize=(10, 2.6 * len(SYSTEMS)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(SYSTEMS), 1, sharex=True)
    for ax, system, mel in zip(axes, SYSTEMS, mels):
        seconds = mel.shape[1] * hop_length / sample_rate
        image = ax.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                          extent=(0.0, seconds, 0, mel.shape[0]))
        ax.set_title(f"{report.example_clip}: {_label(report, system)}")
        ax.set_ylabel("mel band")
    axes[-1].set_xlabel("time (s)")
    figure.colorbar(image, ax=list(axes), label="log magnitude")
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path

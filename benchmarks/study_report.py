"""Equal-budget study report: validation curves against wall-clock time, and a table of each
arm's `vocoder eval` scores, for training runs that were given the same time.

    python benchmarks/study_report.py --arm "a: efficient=runs/a,runs/a.log,eval/a" ... \
        --plot docs/source-filter-study.png

Each arm is `LABEL=RUN_DIR,LOG_FILE,EVAL_DIR`: the run's metrics.jsonl gives the curves, the
first time stamp of its console log marks time zero (so set-up such as fitting the pitch
predictor counts against the budget), and EVAL_DIR/results.json gives the scores.
"""
from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = (
    ("val NLL", None), ("DNSMOS OVRL", "dnsmos_ovrl"), ("ASR WER", "wer"), ("F0 RMSE (cents)", "f0_rmse_cents"),
    ("V/UV error", "vuv_error"), ("log-mel L1", "log_mel_l1"), ("comb (dB)", "comb_db"), ("STOI", "stoi"),
    ("PESQ-wb", "pesq_wb"), ("RTF (x real time)", "rtf"),
)


def _cell(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) >= 0.01 else "0"


def start_time(log_file: Path, first_record: float) -> float:
    """Epoch seconds of the log's first `HH:MM:SS` stamp, on the date of the first record."""
    match = re.search(r"^(\d\d):(\d\d):(\d\d) ", log_file.read_text(errors="replace"), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{log_file}: no time stamp found")
    day = datetime.fromtimestamp(first_record)
    return day.replace(hour=int(match[1]), minute=int(match[2]), second=int(match[3])).timestamp()


def curves(run_dir: Path, log_file: Path) -> tuple[list[dict], float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{run_dir}: metrics.jsonl is empty")
    zero = start_time(log_file, records[0]["time"])
    val = [dict(r, minutes=(r["time"] - zero) / 60) for r in records if r["kind"] == "val"]
    last_step = max(r["step"] for r in records)
    return val, last_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="LABEL=RUN_DIR,LOG_FILE,EVAL_DIR")
    parser.add_argument("--plot", type=Path, required=True, help="where to write the PNG")
    args = parser.parse_args()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows, reference, nlls = [], None, []
    for spec in args.arm:
        label, _, paths = spec.rpartition("=")
        run_dir, log_file, eval_dir = (Path(p) for p in paths.split(","))
        val, last_step = curves(run_dir, log_file)
        minutes = [r["minutes"] for r in val]
        axes[0].plot(minutes, [r["nll"] for r in val], marker=".", label=label)
        nlls += [r["nll"] for r in val]
        axes[1].plot(minutes, [r["mel_l1"] for r in val], marker=".", label=label)
        results = json.loads((eval_dir / "results.json").read_text())
        means = results["means"]
        reference = reference or means
        scores = [f"{val[-1]['nll']:.3f}" if val else "–"]
        scores += [_cell(means["model"].get(key)) for _, key in COLUMNS[1:]]
        rows.append(f"| {label} | {last_step} | {val[-1]['minutes']:.0f} | " + " | ".join(scores) + " |")
    for system in ("ground_truth", "griffin_lim"):
        cells = ["–"] + [_cell(reference[system].get(key)) for _, key in COLUMNS[1:]]
        rows.append(f"| {system.replace('_', ' ')} | | | " + " | ".join(cells) + " |")
    for axis, title in zip(axes, ("validation NLL (nats/sample)", "validation copy-synthesis log-mel L1")):
        axis.set_xlabel("wall-clock minutes (one CPU thread each)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")
    # One diverged validation point would flatten every curve: keep the bulk in view.
    low, high = min(nlls), sorted(nlls)[int(0.98 * (len(nlls) - 1))]
    axes[0].set_ylim(low - 0.2, high + 0.2)
    axes[0].legend()
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)
    print("| arm | steps | minutes at last val | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|---:|---:|" + "---:|" * len(COLUMNS))
    print("\n".join(rows))


if __name__ == "__main__":
    main()

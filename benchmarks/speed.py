"""Inference speed of each model preset on one device: samples/s and real-time factor, and for
`waveglow` the speed ratio against NVIDIA's own implementation (PyPI `waveglow`) with the same weights.

Random weights (speed does not depend on them), fp32, weight norm removed, the same mel and noise.
Rounds alternate ours and NVIDIA's so both see the same machine load; the ratio is the median of
the per-round ratios. Usage: python benchmarks/speed.py [--device cpu] [--seconds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vocoder.config import FlowConfig, preset
from vocoder.inference import Vocoder, resolve_device
from vocoder.nvidia import load_nvidia_waveglow
from vocoder.options import SIGMA

# Small models first: on this VM a process that starts right after another freed gigabytes
# runs ~1.5x slower while the host hands the memory back (measured: `efficient` 25-37x
# real time right after `waveglow`, 51-57x otherwise).
PRESET_NAMES = ("efficient", "efficient-small", "source-filter", "waveglow")
NVIDIA_PACKAGE = "waveglow==22.12.28"
MAX_ROUNDS = 200


@dataclass
class Result:
    model: str
    parameters: int
    audio_seconds: float
    median_seconds: float
    best_seconds: float
    samples_per_second: float
    real_time_factor: float
    vs_nvidia: float | None = None
    vs_nvidia_cpu_time: float | None = None
    nvidia_median_seconds: float | None = None
    rounds: dict[str, list[float]] | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one run."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def random_mel(n_mels: int, frames: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(1, n_mels, frames, generator=generator) * 2.0 - 6.0  # log-mel-like range
    return mel.to(device)


@contextlib.contextmanager
def nvidia_noise(z: torch.Tensor, config: FlowConfig) -> Iterator[None]:
    """Make NVIDIA's `infer`, which draws `torch.cuda.FloatTensor(...).normal_()`, use slices of `z`.

    It draws the final channels first, then each early output from the last flow step down;
    our `z` holds the early outputs first, in step order.
    """
    every, size = config.n_early_every, config.n_early_size
    early_steps = [k for k in reversed(range(1, config.n_flows)) if k % every == 0]
    queue = [z[:, len(early_steps) * size:]] + [z[:, (k // every - 1) * size:(k // every) * size] for k in early_steps]

    class Noise:
        def __init__(self, *shape: int) -> None:
            self.tensor = queue.pop(0)
            assert tuple(self.tensor.shape) == shape, (tuple(self.tensor.shape), shape)

        def normal_(self) -> torch.Tensor:
            return self.tensor

    saved = torch.cuda.FloatTensor
    torch.cuda.FloatTensor = Noise  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        torch.cuda.FloatTensor = saved  # type: ignore[misc]


def nvidia_pair(device: torch.device) -> tuple[torch.nn.Module, Vocoder]:
    """NVIDIA's WaveGlow with random weights, and the same weights through our converter."""
    from waveglow.glow import WaveGlow

    config = preset("waveglow")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NVIDIA's code uses deprecated torch APIs
        theirs = WaveGlow(config.n_mels, config.n_flows, config.n_group, config.n_early_every,
                          config.n_early_size, {"n_layers": config.n_layers, "n_channels": config.n_channels,
                                                "kernel_size": config.kernel_size})
    with torch.no_grad():
        for wn in theirs.WN:
            wn.end.weight.normal_(std=0.02)  # zero-initialised by NVIDIA; random keeps the output finite but real
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "waveglow.pt"
        torch.save({"model": theirs, "iteration": 0}, path)
        ours = load_nvidia_waveglow(path)
    theirs = WaveGlow.remove_weightnorm(theirs)
    return theirs.to(device).eval(), ours.to(device).eval()


def measure(name: str, device: torch.device, seconds: float, repeats: int, min_time: float,
            compare: bool, threads: int | None) -> Result:
    if threads:
        torch.set_num_threads(threads)
    theirs = None
    if compare:
        theirs, model = nvidia_pair(device)
    else:
        model = Vocoder.from_config(preset(name), seed=0).to(device).eval()
    config = model.flow.config
    frames = max(1, round(seconds * model.sample_rate / config.hop_length))
    mel = random_mel(config.n_mels, frames, device)
    z = model.sample_latent(frames, seed=0).to(device)
    sigma = SIGMA.default

    def ours() -> torch.Tensor:
        # The fused flow itself: Vocoder.infer would autocast to fp16 on CUDA.
        with torch.inference_mode():
            return model.fused.infer(mel, sigma=sigma, z=z)

    def nvidia() -> torch.Tensor:
        with torch.inference_mode(), nvidia_noise(z, config):
            return theirs.infer(mel, sigma=sigma)

    runs = {"ours": ours} if theirs is None else {"ours": ours, "nvidia": nvidia}
    times: dict[str, list[float]] = {key: [] for key in runs}
    cpu_times: dict[str, list[float]] = {key: [] for key in runs}
    # Warm-up (allocator, oneDNN primitives, cached inverses), which also checks the weights agree.
    start = time.perf_counter()
    outputs = [run() for run in runs.values()]
    if len(outputs) == 2 and (outputs[0] - outputs[1]).abs().max() > 1e-3:
        raise RuntimeError(f"{name}: our output differs from NVIDIA's with the same weights and noise")
    # Short runs get more rounds, so that every model is timed for about `min_time` seconds.
    rounds = max(repeats, min(MAX_ROUNDS, math.ceil(min_time / (time.perf_counter() - start))))
    for round_index in range(rounds):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
        for key in order:
            wall, cpu = timed(runs[key], device)
            times[key].append(wall)
            cpu_times[key].append(cpu)

    audio_seconds = frames * config.hop_length / model.sample_rate
    median = statistics.median(times["ours"])
    result = Result(
        model=name, parameters=sum(p.numel() for p in model.flow.parameters()), audio_seconds=audio_seconds,
        median_seconds=median, best_seconds=min(times["ours"]),
        samples_per_second=frames * config.hop_length / median, real_time_factor=audio_seconds / median,
        rounds=times)
    if theirs is not None:
        result.vs_nvidia = statistics.median(t / o for t, o in zip(times["nvidia"], times["ours"]))
        # CPU time counts work rather than waiting, so it is steadier on a shared machine.
        result.vs_nvidia_cpu_time = statistics.median(t / o for t, o in zip(cpu_times["nvidia"], cpu_times["ours"]))
        result.nvidia_median_seconds = statistics.median(times["nvidia"])
    return result


def markdown(results: list[Result], header: str, note: str | None) -> str:
    lines = [header, "",
             "| model | parameters | audio | median time | samples/s | real-time factor | vs NVIDIA (same weights) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = "n/a" if r.vs_nvidia is None else f"{r.vs_nvidia:.2f}x (NVIDIA {r.nvidia_median_seconds:.2f} s)"
        lines.append(f"| {r.model} | {r.parameters / 1e6:.1f} M | {r.audio_seconds:.2f} s | {r.median_seconds:.3f} s "
                     f"| {r.samples_per_second:,.0f} | {r.real_time_factor:.2f}x | {ratio} |")
    lines += ["", "Real-time factor: seconds of audio per second of compute (above 1x is faster than real time)."]
    lines += [f"{r.model} vs NVIDIA by process CPU time: {r.vs_nvidia_cpu_time:.2f}x (median of per-round ratios)."
              for r in results if r.vs_nvidia_cpu_time is not None]
    if note:
        lines.append(note)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length per run (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="least timed rounds after one warm-up (default 5)")
    parser.add_argument("--min-time", type=float, default=3.0,
                        help="add rounds until each model is timed for about this many seconds (default 3)")
    parser.add_argument("--models", default=",".join(PRESET_NAMES), help="comma-separated presets")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    note = None
    if importlib.util.find_spec("waveglow") is None:
        note = ("NVIDIA comparison skipped: the `waveglow` package is not installed "
                f"(pip install --no-deps {NVIDIA_PACKAGE}).")
    results = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        # A fresh process per model, as when a user loads one: once a large model has been freed,
        # glibc's heap leaves small models measurably slower (37 -> 55 ms for `efficient` here).
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results.append(pool.submit(measure, name, device, args.seconds, args.repeats, args.min_time,
                                       name == "waveglow" and note is None, args.threads).result())
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    header = (f"Inference speed on {device.type} ({where}), torch {torch.__version__}, fp32, batch 1, "
              f"median of at least {args.repeats} runs")
    print(markdown(results, header, note))
    if args.json:
        payload = {"device": str(device), "where": where, "torch": torch.__version__, "repeats": args.repeats,
                   "note": note, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

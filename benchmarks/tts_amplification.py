"""Amplification check of the text endpoints (issue 14, section 2): eight worst-case text requests
at once against `vocoder serve` as a user gets it (the bundled vocoder, the espeak-ng fallback
front-end, default limits), and a short request sent while they run.

Prints the server's peak resident memory (the kernel's VmHWM, children excluded), each answer and
its latency, and the latency of the short request. Targets: peak under 1.5 GB, short request under
1 s. Usage: python benchmarks/tts_amplification.py [--speeds 0.25,1,4] [--text prose]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

from serve_load import serve

SHORT = "Hello world."
PROSE = ("Printing, in the only sense with which we are at present concerned, differs from most if not from all "
         "the arts and crafts represented in the Exhibition. ")
# 4096 characters each (max_text_chars): digits expand to one spoken word apiece; prose is read
# for minutes, and at speed 4 gets past the estimate, so espeak-ng's output bound stops it.
TEXTS = {"digits": "9" * 4096, "prose": (PROSE * 30)[:4096]}
PEAK_TARGET_MB, SHORT_TARGET_S = 1500.0, 1.0


def memory_mb(pid: int, field: str) -> float:
    """A `/proc/<pid>/status` field (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


async def timed_post(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float, str]:
    started = time.perf_counter()
    response = await client.post(url, json=body)
    detail = response.json()["error"]["message"] if response.status_code >= 400 else f"{len(response.content)} B"
    return response.status_code, time.perf_counter() - started, detail


async def attack(url: str, text: str, speeds: list[float]) -> tuple[list[tuple[int, float, str]], tuple]:
    """Eight worst-case requests at once (speeds in turn), then the short one 50 ms later."""
    async with httpx.AsyncClient(timeout=600) as client:
        heavy = [asyncio.create_task(timed_post(client, f"{url}/v1/tts", {"text": text, "speed": speeds[i % len(speeds)]}))
                 for i in range(8)]
        await asyncio.sleep(0.05)
        short = await timed_post(client, f"{url}/v1/tts", {"text": SHORT})
        return await asyncio.gather(*heavy), short


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", choices=sorted(TEXTS), default="digits", help="worst-case text (default digits)")
    parser.add_argument("--speeds", default="0.25,1,4", help="speeds of the eight requests, in turn")
    parser.add_argument("--torch-threads", type=int, default=1, help="VOCODER_TORCH_THREADS (default 1)")
    args = parser.parse_args(argv)
    speeds = [float(speed) for speed in args.speeds.split(",")]
    with serve(max_batch=8, torch_threads=args.torch_threads, queue_size=64, request_timeout=30) as server:
        with httpx.Client(timeout=60) as client:  # warm the text path once, as a user's first request would
            assert client.post(f"{server.url}/v1/tts", json={"text": SHORT}).status_code == 200
        idle = memory_mb(server.pid, "VmRSS")
        heavy, short = asyncio.run(attack(server.url, TEXTS[args.text], speeds))
        peak = memory_mb(server.pid, "VmHWM")
    print(f"{args.text} text ({len(TEXTS[args.text])} chars) x 8 at speeds {args.speeds}, "
          f"VOCODER_TORCH_THREADS={args.torch_threads}")
    for (status, seconds, detail), index in zip(heavy, range(8)):
        print(f"  request {index} (speed {speeds[index % len(speeds)]:g}): {status} in {seconds:.2f} s: {detail}")
    print(f"short request {SHORT!r}: {short[0]} in {short[1]:.3f} s (target < {SHORT_TARGET_S:g} s)")
    print(f"server memory: {idle:.0f} MB after warm-up, peak {peak:.0f} MB (target < {PEAK_TARGET_MB:g} MB)")
    ok = peak < PEAK_TARGET_MB and short[0] == 200 and short[1] < SHORT_TARGET_S
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

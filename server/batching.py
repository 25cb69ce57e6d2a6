"""The inference worker, one per device: requests wait in a bounded asyncio queue, the worker
gathers up to `max_batch` of them for at most `max_wait_ms`, pads them into one batch and runs it
on its own thread, so the event loop stays responsive and only one batch uses the device at a time.
Text front-end work counts against the same queue limit and deadline, and runs one call at a time on
a thread of its own, so that a long text never holds up vocoding. Both are taken shortest estimated
work first, with an allowance that keeps long work from starving.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
import torch

from server.errors import APIError, client_disconnected
from server.metrics import ServiceMetrics
from vocoder.inference import Vocoder

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The queue is taken in order of arrival time plus this many seconds per (estimated) frame of work:
# short work overtakes long work that arrived a little earlier (a `Hello world.` need not wait for
# eight minute-long texts), but never work that has already waited out its own allowance, which is
# at most max_frames times this (5.2 s at the default 5168 frames), well inside request_timeout.
OVERTAKE_SECONDS_PER_FRAME = 1e-3


@dataclass(frozen=True)
class Result:
    """One request's audio and what it cost."""

    audio: np.ndarray
    inference_time: float
    batch_size: int


async def never_disconnects() -> bool:
    return False


@dataclass(eq=False)
class Job:
    """One request's work: a checked mel `(n_mels, T)` and its own sampling parameters."""

    mel: np.ndarray
    sigma: float
    denoise: float = 0.0
    seed: int | None = None
    is_disconnected: Callable[[], Awaitable[bool]] = never_disconnects
    future: asyncio.Future[Result] = field(init=False)

    @property
    def frames(self) -> int:
        return self.mel.shape[1]


@dataclass(eq=False)
class Call:
    """Work other than vocoding that takes a slot in the same queue and runs one at a time on the
    text thread: a text front-end making a request's mel of about `frames` frames (a cheap
    estimate, used only to order the queue)."""

    function: Callable[[], Any]
    frames: int
    is_disconnected: Callable[[], Awaitable[bool]] = never_disconnects
    future: asyncio.Future[Any] = field(init=False)


Work = Job | Call


def queue_full() -> APIError:
    return APIError(503, "the server is busy (request queue full); retry shortly", code="queue_full",
                    headers={"Retry-After": "1"})


class BatchWorker:
    """Owns the device: batches queued jobs, and runs any other device work (streaming chunks)
    on the same single thread so nothing else touches the model concurrently. Queued calls run
    on a second thread, one at a time: a text front-end is mostly espeak-ng (another process) or
    its own small model, and minutes of text must not stall the vocoding of everyone else."""

    def __init__(self, model: Vocoder, metrics: ServiceMetrics, max_batch: int = 8,
                 max_wait_ms: float = 5.0, queue_size: int = 64) -> None:
        self.model = model
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        # Two queues under one limit (`queue_size` waiting in all), each of entries (arrival +
        # allowance, submission number, work): see OVERTAKE_SECONDS_PER_FRAME.
        self._jobs: asyncio.PriorityQueue[tuple[float, int, Job]] = asyncio.PriorityQueue()
        self._calls: asyncio.PriorityQueue[tuple[float, int, Call]] = asyncio.PriorityQueue()
        self._submitted = itertools.count()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocoder-device")
        self._text_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocoder-text")
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._serve(), name="vocoder-batch-worker"),
                       loop.create_task(self._serve_calls(), name="vocoder-text-worker")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in (self._jobs, self._calls):
            while not queue.empty():
                work = queue.get_nowait()[-1]
                if not work.future.done():
                    work.future.set_exception(APIError(503, "the server is shutting down", code="shutting_down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._text_executor.shutdown(wait=False, cancel_futures=True)

    # -- submitting work ----------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return self._jobs.qsize() + self._calls.qsize()

    @property
    def full(self) -> bool:
        return self.waiting >= self.queue_size

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue `work`; its future resolves to a job's `Result` or a call's return value.
        A full queue is a 503 right away."""
        if self.full:
            raise queue_full()
        loop = asyncio.get_running_loop()
        work.future = loop.create_future()
        order = loop.time() + work.frames * OVERTAKE_SECONDS_PER_FRAME
        entry = (order, next(self._submitted), work)
        if isinstance(work, Call):
            self._calls.put_nowait(entry)
        else:
            self._jobs.put_nowait(entry)
            self._arrived.set()
        self._report_depth()
        return work.future

    def _report_depth(self) -> None:
        self.metrics.queue_depth.set(self.waiting)

    async def run_on_device(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` on the device thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- the worker loop ----------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            batch = await self._gather()
            try:
                wanted = await self._still_wanted(batch)
                if wanted:
                    await self._execute(wanted)
            except Exception as error:  # the worker must outlive any one bad batch
                logger.exception("inference batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)

    async def _serve_calls(self) -> None:
        while True:
            call = (await self._calls.get())[-1]
            self._report_depth()
            try:
                if await self._still_wanted([call]):
                    await self._call(call)
            except Exception as error:  # the worker must outlive any one bad call
                logger.exception("queued call failed")
                if not call.future.done():
                    call.future.set_exception(error)

    async def _gather(self) -> list[Job]:
        """The next batch: the first job in the queue's order plus whatever jobs arrive within
        `max_wait`, up to `max_batch`."""
        loop = asyncio.get_running_loop()
        batch: list[Job] = [(await self._jobs.get())[-1]]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._jobs.get_nowait()[-1])
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self._report_depth()
        return batch

    async def _still_wanted(self, batch: list[Work]) -> list[Any]:
        """Drop work whose caller gave up (timed out) or whose client disconnected while queued."""
        wanted = []
        for work in batch:
            if work.future.done():
                self.metrics.dropped.labels("cancelled").inc()
            elif await work.is_disconnected():
                work.future.set_exception(client_disconnected())
                self.metrics.dropped.labels("disconnected").inc()
            else:
                wanted.append(work)
        return wanted

    async def _call(self, call: Call) -> None:
        # The call's own errors (bad text, too long) are its caller's answer, not a worker failure.
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._text_executor, call.function)
        except Exception as error:
            if not call.future.done():
                call.future.set_exception(error)
            return
        if not call.future.done():  # its caller may have timed out meanwhile
            call.future.set_result(result)

    async def _execute(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        audios = await self.run_on_device(self._infer, jobs)
        elapsed = time.perf_counter() - started
        seconds = sum(audio.shape[0] for audio in audios) / self.model.sample_rate
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.audio_seconds.inc(seconds)
        self.metrics.real_time_factor.observe(elapsed / seconds)
        for job, audio in zip(jobs, audios):
            if not job.future.done():  # its caller may have timed out meanwhile
                job.future.set_result(Result(audio, elapsed, len(jobs)))

    @torch.inference_mode()
    def _infer(self, jobs: list[Job]) -> list[np.ndarray]:
        """One padded batch through the flow; each item comes out as if it had run alone."""
        model = self.model
        frames = [job.frames for job in jobs]
        longest = max(frames)
        per_frame = model.flow.config.groups_per_frame
        mel = torch.full((len(jobs), model.mel.config.n_mels, longest), model.mel.config.silence_value)
        z = torch.zeros(model.flow.latent_shape(len(jobs), longest))
        for row, job in enumerate(jobs):
            mel[row, :, :job.frames] = torch.from_numpy(job.mel)
            z[row, :, :job.frames * per_frame] = model.sample_latent(job.frames, seed=job.seed)[0]
        lengths = torch.tensor(frames) if min(frames) < longest else None
        # One sigma per row: requests with different sigmas share a batch.
        audio = model.infer(mel, sigma=[job.sigma for job in jobs], lengths=lengths, z=z)
        outputs = []
        for row, job in enumerate(jobs):
            item = audio[row:row + 1, :job.frames * model.hop_length]
            if job.denoise > 0:
                # Per item, on the unpadded audio: exactly what the request would get alone.
                item = model.denoiser()(item, job.denoise)
            outputs.append(item[0].float().cpu().numpy())
        return outputs

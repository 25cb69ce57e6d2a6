"""What one app owns (`Service`: settings, models, worker, formats, metrics), how it starts, and
the one path from a checked mel to an audio response that every synthesis endpoint takes.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from typing import Annotated, Any, AsyncIterator, Callable, Iterator

import numpy as np
import torch
from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from server.batching import BatchWorker, Call, Job, queue_full
from server.connection import DisconnectWatch
from server.pitch_speed import edit_mel
from server.errors import APIError
from server.formats import AudioFormat, FormatRegistry, audio_response, streaming_audio_response
from server.metrics import ServiceMetrics
from server.options import RequestOptions
from server.schemas import MelLimits
from server.settings import Settings
from vocoder.errors import CheckpointError
from vocoder.inference import Vocoder
from vocoder.options import SIGMA
from vocoder.text.espeak import EspeakError
from vocoder.text.frontend import TextFrontend, load_text_frontend

logger = logging.getLogger(__name__)

WARMUP_FRAMES = 32


def load_model(settings: Settings) -> Vocoder:
    """The configured checkpoint, the bundled one, or (loudly) a random-init model."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        return Vocoder.load_or_random(settings.checkpoint, settings.device)


def check_text_frontend(frontend: TextFrontend, model: Vocoder) -> None:
    """Refuse a text front-end whose mels are not in the vocoder's convention."""
    if frontend.mel_config != model.mel.config:
        raise CheckpointError(f"the text front-end {frontend.name!r} makes mels with {frontend.mel_config.to_dict()}, "
                              f"but the vocoder expects {model.mel.config.to_dict()}")


def load_text(settings: Settings, model: Vocoder) -> TextFrontend:
    """The configured text-to-mel checkpoint, the bundled one, or (loudly) the espeak-ng fallback,
    which analyses its speech with the vocoder's own mel config; `EspeakError` if that is missing."""
    with warnings.catch_warnings():
        # The service logs its own line about the fallback (`_start_text`); once is enough.
        warnings.filterwarnings("ignore", message="no trained text-to-mel checkpoint")
        frontend = load_text_frontend(settings.tts_checkpoint, model.device, mel_config=model.mel.config)
    check_text_frontend(frontend, model)
    return frontend


def checkpoint_label(settings: Settings, model: Vocoder) -> str:
    if model.metadata.get("random_init"):
        return "random-init"
    return str(settings.checkpoint) if settings.checkpoint else "bundled"


def timed_out(settings: Settings) -> APIError:
    return APIError(504, f"the audio was not ready within request_timeout ({settings.request_timeout:g} s)",
                    code="timeout")


class Service:
    """Everything one app owns (kept on `app.state.service`): settings, models, worker, formats, metrics."""

    def __init__(self, settings: Settings, model: Vocoder | None, text_frontend: TextFrontend | None = None) -> None:
        self.settings = settings
        self.model = model
        self.text_frontend = text_frontend
        self.formats = FormatRegistry.probe()
        self.metrics = ServiceMetrics()
        self.worker: BatchWorker | None = None
        self.ready = False
        self.problem = "the model is loading"
        self.text_problem = "the text front-end is loading"

    async def start(self) -> None:
        """Load (off the event loop), start the worker, warm up; failures keep /readyz at 503."""
        try:
            if self.settings.torch_threads:
                # On a shared CPU, fewer threads than cores can be many times faster (less spinning).
                torch.set_num_threads(self.settings.torch_threads)
            if self.model is None:
                self.model = await asyncio.get_running_loop().run_in_executor(None, load_model, self.settings)
            if self.model.metadata.get("random_init"):
                logger.warning("NO TRAINED CHECKPOINT: serving a RANDOMLY INITIALISED vocoder; its output is noise")
            await self._start_text(self.model)
            s = self.settings
            self.worker = BatchWorker(self.model, self.metrics, s.max_batch, s.max_wait_ms, s.queue_size)
            self.worker.start()
            self.problem = "the model is warming up"
            started = time.perf_counter()
            # One short inference (with the denoiser, which is built on first use) before taking traffic.
            silence = np.full((self.model.mel.config.n_mels, WARMUP_FRAMES), self.model.mel.config.silence_value,
                              dtype=np.float32)
            await self.worker.submit(Job(silence, SIGMA.default, denoise=0.1, seed=0))
            logger.info("warm-up done in %.2f s; ready (checkpoint: %s, device: %s)", time.perf_counter() - started,
                        checkpoint_label(s, self.model), self.model.device)
            self.ready = True
        except Exception as error:
            self.problem = f"the model failed to start: {error}"
            logger.exception("model startup failed")

    async def _start_text(self, model: Vocoder) -> None:
        """Load or check the text front-end. Only a missing espeak-ng is survivable: the mel
        endpoints still serve and the text endpoints answer 503; anything else stops the start."""
        if self.text_frontend is None:
            try:
                self.text_frontend = await asyncio.get_running_loop().run_in_executor(
                    None, load_text, self.settings, model)
            except EspeakError as error:
                self.text_problem = f"text-to-speech is unavailable: {error}"
                logger.warning("%s; /v1/tts and /v1/audio/speech answer 503", self.text_problem)
                return
        else:
            check_text_frontend(self.text_frontend, model)
        if not self.text_frontend.trained:
            logger.warning("NO TRAINED TEXT-TO-MEL MODEL: text endpoints use %s (%s)", self.text_frontend.name,
                           self.text_frontend.description)

    async def close(self) -> None:
        self.ready = False
        self.problem = "the server is shutting down"
        if self.worker is not None:
            await self.worker.close()

    def require_ready(self) -> tuple[Vocoder, BatchWorker]:
        if not self.ready or self.model is None or self.worker is None:
            raise APIError(503, self.problem, code="not_ready", headers={"Retry-After": "1"})
        return self.model, self.worker

    def require_text(self) -> TextFrontend:
        self.require_ready()
        if self.text_frontend is None:
            raise APIError(503, self.text_problem, code="tts_unavailable")
        return self.text_frontend

    @property
    def mel_limits(self) -> MelLimits:
        model, _ = self.require_ready()
        config = model.mel.config
        return MelLimits(n_mels=config.n_mels, min_frames=math.ceil(config.min_samples / config.hop_length),
                         max_frames=self.settings.max_frames, seconds_per_frame=config.hop_length / config.sample_rate,
                         mel_config=config)

    def deadline(self) -> float:
        """When a request arriving now gets its 504."""
        return asyncio.get_running_loop().time() + self.settings.request_timeout

    async def synthesize(self, request: Request, mel: np.ndarray, options: RequestOptions, audio_format: AudioFormat,
                         deadline: float) -> Response:
        """A checked mel `(n_mels, T)` to the response: its pitch and speed edits, then the batch
        worker, or a stream when `options.stream`."""
        model, worker = self.require_ready()
        if options.pitch or options.speed != 1.0:
            mel = await run_in_threadpool(edit_mel, mel, options.pitch, options.speed, model.mel.config,
                                          self.mel_limits)
        if options.stream:
            return await self._stream(mel, options, audio_format, deadline)
        with DisconnectWatch(request.receive) as watch:
            result = await self._wait(worker.submit(Job(mel, options.sigma, options.denoise, options.seed,
                                                        watch.is_disconnected)), deadline)
        return await audio_response(audio_format, result.audio, model.sample_rate, options.sample_rate,
                                    result.inference_time, headers={"X-Batch-Size": str(result.batch_size)})

    async def queued(self, request: Request, function: Callable[[], Any], frames: int, deadline: float) -> Any:
        """`function()`'s result, run on the text thread (one call at a time) in its turn in the
        request queue, so that it shares vocoding's queue limit (503 when full) and deadline (504).
        `frames`, an estimate of the mel it makes, places it in the queue's order."""
        _, worker = self.require_ready()
        with DisconnectWatch(request.receive) as watch:
            return await self._wait(worker.submit(Call(function, frames, watch.is_disconnected)), deadline)

    async def _wait(self, future: asyncio.Future[Any], deadline: float) -> Any:
        try:
            return await asyncio.wait_for(future, max(deadline - asyncio.get_running_loop().time(), 0))
        except asyncio.TimeoutError:
            raise timed_out(self.settings) from None

    async def _stream(self, mel: np.ndarray, options: RequestOptions, audio_format: AudioFormat,
                      deadline: float) -> Response:
        model, worker = self.require_ready()
        if worker.full:
            raise queue_full()
        frames = mel.shape[1]
        chunk_frames = self.settings.stream_chunk_frames
        # Vocoder.stream denoises chunk by chunk, and the denoiser's STFT needs a few frames: never
        # leave a final chunk shorter than a request may be.
        while 0 < frames % chunk_frames < self.mel_limits.min_frames:
            chunk_frames += 1

        def pieces() -> Iterator[np.ndarray]:
            z = model.sample_latent(frames, seed=options.seed)
            for piece in model.stream(torch.from_numpy(mel)[None], options.sigma, z=z, chunk_frames=chunk_frames,
                                      denoise=options.denoise):
                yield piece[0].float().cpu().numpy()

        generator = pieces()
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            first = await asyncio.wait_for(worker.run_on_device(next, generator, None), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            raise timed_out(self.settings) from None
        inference_time = time.perf_counter() - started

        async def chunks() -> AsyncIterator[np.ndarray]:
            piece = first
            while piece is not None:
                self.metrics.audio_seconds.inc(piece.shape[0] / model.sample_rate)
                yield piece
                piece = await worker.run_on_device(next, generator, None)

        return streaming_audio_response(audio_format, chunks(), model.sample_rate, options.sample_rate,
                                        frames * model.hop_length / model.sample_rate, inference_time)


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

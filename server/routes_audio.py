"""POST /v1/edit: a recording in, edited audio out. The recording is encoded exactly into the
flow's latent, edited and decoded on the device thread, between batches: an exact latent cannot
share a batch with sampled ones, whose noise the worker draws itself.
"""
from __future__ import annotations

import asyncio
import time
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from server.batching import queue_full
from server.bodies import audio_from_upload, media_type, unsupported_media_type, uploaded_file
from server.pitch_speed import edit_audio, speed_source
from server.formats import audio_response
from server.options import RequestOptions
from server.service import ServiceDep, timed_out


async def _audio_body(request: Request) -> bytes:
    body_type = media_type(request)
    if body_type == "multipart/form-data":
        return await uploaded_file(request, "the audio file")
    if body_type.startswith("audio/"):
        return await request.body()
    raise unsupported_media_type(request, "audio/* (wav, flac, ogg, ...)", "multipart/form-data")


async def edit(request: Request, service: ServiceDep, options: RequestOptions) -> Response:
    """Pitch and speed edits of a recording (the body, or a file upload in the field `file`),
    exact through the flow: with no edit and no redraw the audio comes back unchanged. `options`
    come from the query string (`RequestForms.with_query`)."""
    model, worker = service.require_ready()
    deadline = service.deadline()
    audio_format = service.formats.get(options.format)
    limits, config = service.mel_limits, model.mel.config
    audio = await run_in_threadpool(audio_from_upload, await _audio_body(request), config, limits)
    # The decoder's memory grows with the edited length, so that is bounded too.
    speed_source(config.num_frames(audio.size), options.speed, config.hop_length, limits, "the audio", "audio")
    if worker.full:
        raise queue_full()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        edited = await asyncio.wait_for(worker.run_on_device(edit_audio, model, audio, options),
                                        max(deadline - loop.time(), 0))
    except asyncio.TimeoutError:
        raise timed_out(service.settings) from None
    inference_time = time.perf_counter() - started
    service.metrics.audio_seconds.inc(edited.shape[0] / model.sample_rate)
    return await audio_response(audio_format, edited, model.sample_rate, options.sample_rate, inference_time)

"""The FastAPI app factory: routes, middleware and error handlers, plus the lifespan that loads
the models (unless given), starts the batch worker and warms up before /readyz says ready.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Sequence

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import create_model
from starlette.concurrency import run_in_threadpool

from server.bodies import (NPY_MEDIA_TYPES, edit_openapi, json_openapi, media_type, mel_from_json, mel_from_npy,
                           unsupported_media_type, uploaded_file, vocode_openapi)
from server.connection import BodyGuardMiddleware
from server.errors import install_error_handlers
from server.metrics import MetricsMiddleware
from server.options import EDIT, REQUEST_OPTIONS, VOCODE, RequestForms, RequestOption, RequestOptions, get_forms
from server.routes_audio import edit
from server.routes_text import SPEECH_EXAMPLE, TTS_EXAMPLE, SpeechRequest, speech, tts
from server.schemas import ErrorResponse, FlowSummary, MelLimits, ModelInfo, Status, TextFrontendInfo
from server.service import Service, ServiceDep, checkpoint_label
from server.settings import Settings
from vocoder import __version__
from vocoder.inference import Vocoder
from vocoder.text.frontend import TextFrontend

logger = logging.getLogger(__name__)

EXPOSED_HEADERS = ["X-Audio-Duration", "X-Inference-Time", "X-Sample-Rate", "X-Batch-Size"]
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": description} for status, description in {
    400: "malformed body (not JSON, not .npy, unreadable audio, broken multipart)",
    408: "the body did not arrive within body_timeout",
    413: "body larger than max_body_bytes, or a mel, speech or audio longer than max_frames",
    415: "unsupported Content-Type",
    422: "invalid input or parameter",
    503: "not ready or queue full (see Retry-After), or text-to-speech unavailable",
    504: "request_timeout passed before the audio was ready",
}.items()}


# -- routes -------------------------------------------------------------------------------------
async def healthz() -> Status:
    """Liveness: 200 while the process is up."""
    return Status(status="ok")


async def readyz(service: ServiceDep) -> Status:
    """Readiness: 200 once the model is loaded and warm, 503 before."""
    service.require_ready()
    return Status(status="ready")


async def prometheus_metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition of this app's metrics."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def models(request: Request, service: ServiceDep) -> ModelInfo:
    """The loaded model, the mel convention a client must match, the service's limits and the text front-end."""
    model, _ = service.require_ready()
    settings, limits, flow = service.settings, service.mel_limits, model.flow.config
    frontend, forms = service.text_frontend, get_forms(request)
    return request.app.state.model_info(
        checkpoint=checkpoint_label(settings, model),
        device=str(model.device),
        sample_rate=model.sample_rate,
        hop_length=model.hop_length,
        mel={**model.mel.config.to_dict(), "silence_value": model.mel.config.silence_value,
             "value_range": list(model.mel.config.value_range)},
        flow=FlowSummary(family=flow.family, n_group=flow.n_group, n_flows=flow.n_flows, n_layers=flow.n_layers,
                         n_channels=flow.n_channels, parameters=sum(p.numel() for p in model.flow.parameters()),
                         receptive_field_frames=flow.receptive_field_frames()),
        limits=forms.limits(
            min_frames=limits.min_frames, max_frames=limits.max_frames,
            max_seconds=round(limits.max_frames * limits.seconds_per_frame, 3),
            max_batch=settings.max_batch, max_body_bytes=settings.max_body_bytes, queue_size=settings.queue_size,
            request_timeout=settings.request_timeout, max_text_chars=settings.max_text_chars,
            formats=service.formats.names, stream_formats=service.formats.stream_names,
            # The output keeps the model's rate unless a request asks for another.
            **forms.ranges(defaults={"sample_rate": model.sample_rate})),
        text_frontend=TextFrontendInfo(name=frontend.name, description=frontend.description,
                                       trained=frontend.trained) if frontend else None,
    )


async def _read_mel(request: Request, options: RequestOptions,
                    limits: MelLimits) -> tuple[np.ndarray, RequestOptions]:
    """The request's checked mel and its final options, whatever the body type."""
    body_type = media_type(request)
    if body_type in NPY_MEDIA_TYPES:
        return await run_in_threadpool(mel_from_npy, await request.body(), limits), options
    if body_type == "application/json":
        mel, body = await run_in_threadpool(mel_from_json, await request.body(), limits,
                                            get_forms(request).vocode_body)
        return mel, options.merged(body)
    if body_type == "multipart/form-data":
        return await run_in_threadpool(mel_from_npy, await uploaded_file(request, "the .npy mel"), limits), options
    raise unsupported_media_type(request, "application/json", *NPY_MEDIA_TYPES, "multipart/form-data")


async def vocode(request: Request, service: ServiceDep, options: RequestOptions) -> Response:
    """Mel to audio. Send the mel as JSON, as a .npy body, or as a .npy file upload (field `file`);
    `pitch` and `speed` edit the mel before it is vocoded. `options` come from the query string
    (`RequestForms.with_query`)."""
    service.require_ready()
    deadline = service.deadline()
    mel, options = await _read_mel(request, options, service.mel_limits)
    audio_format = service.formats.get(options.format, stream=options.stream)
    return await service.synthesize(request, mel, options, audio_format, deadline)


# -- the factory --------------------------------------------------------------------------------
@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    # Start in the background so /healthz answers (and /readyz says 503) while loading and warming up.
    startup = asyncio.create_task(service.start(), name="vocoder-startup")
    try:
        yield
    finally:
        startup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await startup
        await service.close()


def create_app(settings: Settings | None = None, model: Vocoder | None = None,
               text_frontend: TextFrontend | None = None,
               options: Sequence[RequestOption] = REQUEST_OPTIONS) -> FastAPI:
    """The service app. `model` and `text_frontend`, when given, are served as-is (they should be
    what `settings.checkpoint` and `settings.tts_checkpoint` name); otherwise the app loads them
    at startup. Either way the text front-end must share the vocoder's mel config. `options`:
    the request options, from which every request form and /v1/models' limits are derived."""
    settings = settings or Settings()
    logging.getLogger("server").setLevel(settings.log_level.upper())
    service = Service(settings, model, text_frontend)
    # FastAPIOffline serves /docs and /redoc from packaged assets, not a CDN, so they work offline.
    app = FastAPIOffline(title="flow-vocoder", version=__version__, lifespan=_lifespan,
                         description="Mel spectrogram or text to audio with a WaveGlow-style flow vocoder, and "
                                     "pitch and speed edits of recordings. See docs/SERVICE.md for the full "
                                     "reference.")
    app.state.service = service
    app.state.forms = forms = RequestForms(tuple(options))
    app.state.model_info = create_model("ModelInfo", __base__=ModelInfo, limits=(forms.limits, ...))
    install_error_handlers(app)

    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"],
                      responses={503: ERROR_RESPONSES[503]})
    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"], tags=["health"],
                      response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    app.add_api_route("/v1/models", models, methods=["GET"], tags=["vocoder"], response_model=app.state.model_info,
                      responses={503: ERROR_RESPONSES[503]})
    formats = service.formats
    for path, endpoint, tag, openapi in [
        ("/v1/vocode", forms.with_query(vocode, VOCODE), "vocoder", vocode_openapi(formats, forms.vocode_body)),
        ("/v1/edit", forms.with_query(edit, EDIT), "editing", edit_openapi(formats)),
        ("/v1/tts", tts, "text", json_openapi(forms.tts_body, TTS_EXAMPLE, formats)),
        ("/v1/audio/speech", speech, "text", json_openapi(SpeechRequest, SPEECH_EXAMPLE, formats)),
    ]:
        app.add_api_route(path, endpoint, methods=["POST"], tags=[tag], response_class=Response,
                          responses=ERROR_RESPONSES, openapi_extra=openapi)

    # Added innermost first: the body guard sits inside CORS, and metrics see every response.
    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app

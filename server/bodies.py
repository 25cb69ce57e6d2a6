"""Reading request bodies: the media type, the multipart field `file`, JSON into a request model,
a .npy or JSON mel into a checked array, an uploaded recording into checked samples, and the
OpenAPI description of those bodies (the endpoints parse them themselves, so FastAPI cannot).
"""
from __future__ import annotations

import io
from typing import Any, TypeVar

import numpy as np
import soundfile
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from server.errors import APIError, validation_message
from server.formats import FormatRegistry
from server.schemas import EXAMPLE_REQUEST, MelLimits
from vocoder.audio import load_audio
from vocoder.errors import AudioError
from vocoder.mel import MelConfig

NPY_MEDIA_TYPES = ("application/octet-stream", "application/x-npy")
BINARY = {"type": "string", "format": "binary"}
Model = TypeVar("Model", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported_media_type(request: Request, *accepted: str) -> APIError:
    choices = f"{', '.join(accepted[:-1])} or {accepted[-1]}" if len(accepted) > 1 else accepted[0]
    return APIError(415, f"unsupported Content-Type {media_type(request) or '(none)'!r}; send {choices}",
                    code="unsupported_media_type")


async def uploaded_file(request: Request, what: str) -> bytes:
    """The bytes of the multipart field `file`, where the client must put `what`."""
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(422, f"a multipart body needs {what} as a file in the field 'file'",
                           code="missing_file", param="file")
        return await upload.read()


def parse_json(body: bytes, model: type[Model], example: str) -> Model:
    """`body` as a `model`: 400 when it is not JSON, 422 when it is empty or invalid."""
    if not body:
        raise APIError(422, f"request body is empty; send {example}", code="empty_body")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors()
        if errors[0]["type"] == "json_invalid":
            raise APIError(400, f"body is not valid JSON ({errors[0]['msg']})", code="malformed_json") from None
        message, param = validation_message(list(errors))
        raise APIError(422, message, code="invalid_parameter", param=param) from None


async def json_body(request: Request, model: type[Model], example: str) -> Model:
    """The body of a JSON-only endpoint as a `model`; any other Content-Type is a 415."""
    if media_type(request) != "application/json":
        raise unsupported_media_type(request, "application/json")
    return parse_json(await request.body(), model, example)


# -- mels ----------------------------------------------------------------------------------------
def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return shape, dtype


def mel_from_npy(body: bytes, limits: MelLimits) -> np.ndarray:
    """Decode a .npy mel (float32 or float16), refusing pickles, checking the shape before the data."""
    if not body:
        raise APIError(422, "request body is empty; send a .npy mel", code="empty_body")
    stream = io.BytesIO(body)
    try:
        shape, dtype = _npy_header(stream)
    except (ValueError, SyntaxError, EOFError) as error:
        raise APIError(400, f"body is not a valid .npy file ({error})", code="malformed_npy") from None
    if dtype.hasobject:
        raise APIError(422, "pickled (object) .npy arrays are refused; send float32 or float16",
                       code="pickled_npy")
    if dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise APIError(422, f"mel must be float32 or float16, got {dtype}", code="invalid_mel_dtype", param="mel")
    limits.check_shape(shape)
    stream.seek(0)
    try:
        mel = np.load(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise APIError(400, f"body is not a valid .npy file ({error})", code="malformed_npy") from None
    return limits.check(mel)


def mel_from_json(body: bytes, limits: MelLimits, model: type[Model]) -> tuple[np.ndarray, Model]:
    """Decode a JSON body, a `model` with a field `mel`, into a checked mel and the parameters it carries."""
    request = parse_json(body, model, '{"mel": [[...], ...]}')
    try:
        with np.errstate(over="ignore"):  # overflow to inf is reported as non-finite below
            mel = np.array(request.mel, dtype=np.float32)
    except ValueError:
        raise APIError(422, "mel rows must all have the same number of frames", code="invalid_mel_shape",
                       param="mel") from None
    return limits.check(mel), request


# -- audio ---------------------------------------------------------------------------------------
def audio_from_upload(body: bytes, config: MelConfig, limits: MelLimits) -> np.ndarray:
    """An uploaded recording (anything libsndfile reads, any rate) as mono float32 at the model's
    rate, between `min_samples` and `max_frames` long."""
    if not body:
        raise APIError(422, "request body is empty; send an audio file", code="empty_body")
    try:
        info = soundfile.info(io.BytesIO(body))
        seconds = info.frames / info.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, ZeroDivisionError) as error:
        # libsndfile's own words, without the "Error opening <BytesIO object at 0x...>" around them.
        detail = getattr(error, "error_string", None) or error
        raise APIError(400, f"body is not a readable audio file ({detail})", code="malformed_audio",
                       param="file") from None
    # Bounded by the header before decoding: a small compressed upload can hold hours of audio.
    limits.check_frames(config.num_frames(round(seconds * config.sample_rate)), "the audio", "file", "audio")
    try:
        audio = load_audio(body, config.sample_rate)
    except AudioError as error:
        raise APIError(422, str(error), code="invalid_audio", param="file") from None
    if audio.size < config.min_samples:
        raise APIError(422, f"the audio has {audio.size} samples at {config.sample_rate} Hz, at least "
                            f"{config.min_samples} are needed", code="audio_too_short", param="file")
    limits.check_frames(config.num_frames(audio.size), "the audio", "file", "audio")
    return audio


# -- OpenAPI -------------------------------------------------------------------------------------
def _audio_responses(formats: FormatRegistry) -> dict[str, Any]:
    return {"200": {
        "description": f"audio in the requested format ({', '.join(formats.names)})",
        "content": {audio_format.media_type: {"schema": BINARY} for audio_format in formats.formats.values()},
    }}


def _file_upload(description: str) -> dict[str, Any]:
    return {"schema": {"type": "object", "required": ["file"],
                       "properties": {"file": {**BINARY, "description": description}}}}


def vocode_openapi(formats: FormatRegistry, body: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI extras of POST /v1/vocode: the body in every content type (`body`: the JSON one),
    and the audio answered."""
    npy = {"schema": {**BINARY, "description": ".npy file, shape [n_mels, T] or [1, n_mels, T], "
                                               "float32 or float16, not pickled"}}
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": body.model_json_schema(), "example": EXAMPLE_REQUEST},
            **{npy_type: npy for npy_type in NPY_MEDIA_TYPES},
            "multipart/form-data": _file_upload(".npy mel, as for a binary body"),
        }},
        "responses": _audio_responses(formats),
    }


def edit_openapi(formats: FormatRegistry) -> dict[str, Any]:
    """OpenAPI extras of POST /v1/edit: an audio file as the body or as a multipart upload."""
    audio = "wav, flac, ogg or anything libsndfile reads; mono or not, any sample rate"
    return {
        "requestBody": {"required": True, "content": {
            "audio/*": {"schema": {**BINARY, "description": audio}},
            "multipart/form-data": _file_upload(audio),
        }},
        "responses": _audio_responses(formats),
    }


def json_openapi(model: type[BaseModel], example: dict[str, Any], formats: FormatRegistry) -> dict[str, Any]:
    """OpenAPI extras of a JSON endpoint that answers with audio."""
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": model.model_json_schema(), "example": example},
        }},
        "responses": _audio_responses(formats),
    }

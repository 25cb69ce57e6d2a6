"""The service's request options: which endpoint takes which `vocoder.options` option, in one
list, and every HTTP form derived from it: query parameters, JSON body fields, the options object
an endpoint receives, and the ranges /v1/models reports. Adding an option is one entry here.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Awaitable, Callable, Mapping, Sequence

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from vocoder.options import (DENOISE, FORMAT, NOISE_SCALE, PITCH, REDRAW, SAMPLE_RATE, SEED, SIGMA, SPEED, STREAM,
                             Option)

# The endpoints that take options: POST /v1/vocode, /v1/edit and /v1/tts (and /v1/audio/speech,
# which maps OpenAI's fields onto /v1/tts's).
VOCODE, EDIT, TTS = "vocode", "edit", "tts"

FORMAT_HELP = "output format: wav, flac, pcm (s16le), opus, mp3; GET /v1/models lists those available"
TEXT_SPEED_HELP = "speaking rate: every duration is divided by it (length_scale = 1 / speed), pitch kept"


@dataclass(frozen=True)
class RequestOption:
    """`option` as the service takes it: `endpoints` maps each endpoint that takes it to its
    description there (None: the option's own help). `listed`: /v1/models reports its range."""

    option: Option
    endpoints: Mapping[str, str | None]
    listed: bool = True

    @property
    def name(self) -> str:
        return self.option.name

    def description(self, endpoint: str) -> str:
        return self.endpoints[endpoint] or self.option.help



def json_field(option: Option, description: str | None = None, optional: bool = False) -> Any:
    """`option` as a pydantic field: its default (None when `optional`), range and description."""
    return Field(None if optional else option.default, ge=option.low, le=option.high,
                 description=description or option.help)


_EVERYWHERE = {VOCODE: None, EDIT: None, TTS: None}

REQUEST_OPTIONS: tuple[RequestOption, ...] = (
    RequestOption(SIGMA, {VOCODE: None, EDIT: "temperature of the redrawn noise (with redraw=true)",
                          TTS: "vocoder latent temperature"}),
    RequestOption(SEED, {VOCODE: None, EDIT: "seed of the redrawn noise (with redraw=true)", TTS: None}, listed=False),
    RequestOption(DENOISE, _EVERYWHERE),
    RequestOption(FORMAT, {VOCODE: FORMAT_HELP, EDIT: FORMAT_HELP, TTS: None}),
    RequestOption(SAMPLE_RATE, _EVERYWHERE),
    RequestOption(STREAM, {VOCODE: None}),
    RequestOption(PITCH, _EVERYWHERE),
    RequestOption(SPEED, {VOCODE: None, EDIT: None, TTS: TEXT_SPEED_HELP}),
    RequestOption(REDRAW, {EDIT: None}),
    RequestOption(NOISE_SCALE, {TTS: None}),
)


class RequestOptions(BaseModel):
    """The options of one request, after merging its query string and JSON body."""

    model_config = ConfigDict(frozen=True)

    def merged(self, body: BaseModel) -> "RequestOptions":
        """These options with every one that the JSON `body` sets taking precedence."""
        given = body.model_dump(include=set(type(self).model_fields), exclude_none=True)
        return self.model_copy(update=given)


class Range(BaseModel):
    min: int | float
    max: int | float
    default: int | float | None = None


class Limits(BaseModel):
    """The service's limits in /v1/models; `RequestForms.limits` adds one `Range` per listed option."""

    min_frames: int
    max_frames: int
    max_seconds: float
    max_batch: int
    max_body_bytes: int
    queue_size: int
    request_timeout: float
    max_text_chars: int
    formats: list[str]
    stream_formats: list[str]


@dataclass(frozen=True)
class RequestForms:
    """Every HTTP form of `options`, built once per app (`create_app(options=...)`)."""

    options: Sequence[RequestOption] = REQUEST_OPTIONS
    vocode_options: type[RequestOptions] = field(init=False)
    edit_options: type[RequestOptions] = field(init=False)
    vocode_body: type[BaseModel] = field(init=False)
    tts_body: type[BaseModel] = field(init=False)
    limits: type[Limits] = field(init=False)

    def __post_init__(self) -> None:
        build = functools.partial(object.__setattr__, self)
        build("vocode_options", self._options_model("VocodeOptions", VOCODE))
        build("edit_options", self._options_model("EditOptions", EDIT))
        # Left out of a /v1/vocode JSON body, an option falls back to the query string.
        build("vocode_body", self._body_model(
            "VocodeRequest", VOCODE, optional=True,
            mel=(list[list[float]], Field(description="log-mel, n_mels rows of T frames, in the model's convention"))))
        build("tts_body", self._body_model(
            "TTSRequest", TTS, optional=False,
            text=(str, Field(description="English text; numbers, currency and abbreviations are spelled out"))))
        build("limits", create_model("Limits", __base__=Limits, **{
            option.name: (Range, ...) for option in self.options if option.listed and option.option.bounded}))

    def taking(self, endpoint: str) -> list[RequestOption]:
        return [option for option in self.options if endpoint in option.endpoints]

    def _options_model(self, name: str, endpoint: str) -> type[RequestOptions]:
        return create_model(name, __base__=RequestOptions, **{
            option.name: (option.option.annotation, option.option.default) for option in self.taking(endpoint)})

    def _body_model(self, name: str, endpoint: str, optional: bool, **fields: Any) -> type[BaseModel]:
        for option in self.taking(endpoint):
            annotation = option.option.annotation | None if optional else option.option.annotation
            fields[option.name] = (annotation, json_field(option.option, option.description(endpoint), optional))
        return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)

    def query(self, endpoint: str) -> Callable[..., RequestOptions]:
        """A dependency that reads `endpoint`'s options from the query string, one parameter each."""
        model = self.vocode_options if endpoint == VOCODE else self.edit_options

        def from_query(**values: Any) -> RequestOptions:
            return model(**values)

        from_query.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
            inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.option.default,
                              annotation=Annotated[option.option.annotation,
                                                   Query(ge=option.option.low, le=option.option.high,
                                                         description=option.description(endpoint))])
            for option in self.taking(endpoint)])
        return from_query

    def with_query(self, endpoint: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
        """`endpoint` with its parameter `options` filled from the query string by `query(name)`."""
        signature = inspect.signature(endpoint, eval_str=True)
        dependency = Annotated[RequestOptions, Depends(self.query(name))]
        parameters = [parameter.replace(annotation=dependency) if parameter.name == "options" else parameter
                      for parameter in signature.parameters.values()]

        @functools.wraps(endpoint)
        async def route(*args: Any, **kwargs: Any) -> Any:
            return await endpoint(*args, **kwargs)

        route.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return route

    def synthesis_options(self, body: BaseModel) -> RequestOptions:
        """The /v1/vocode options of a text request: those it shares with /v1/vocode, except
        `speed`, which for text is the speaking rate (the text front-end's), not a mel edit."""
        shared = set(self.vocode_options.model_fields) - {SPEED.name}
        return self.vocode_options(**body.model_dump(include=shared))

    def ranges(self, defaults: Mapping[str, Any]) -> dict[str, Range]:
        """The `Range` of every listed option; `defaults` overrides an option's own default."""
        return {option.name: Range(min=option.option.low, max=option.option.high,
                                   default=defaults.get(option.name, option.option.default))
                for option in self.options if option.listed and option.option.bounded}


def get_forms(request: Request) -> RequestForms:
    return request.app.state.forms

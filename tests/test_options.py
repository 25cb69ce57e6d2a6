"""Each option is defined once (vocoder/options.py): every surface takes its default and range from
there, sigma reaches the flow one way on every path, and a new request option declared in one
place appears in every HTTP form of it, in the OpenAPI document and in /v1/models."""
from __future__ import annotations

import inspect

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.options import EDIT, REQUEST_OPTIONS, TTS, VOCODE, RequestOption
from server.settings import Settings
from test_server import assert_error, random_mel, tiny_vocoder, wait_ready
from vocoder import cli, latents
from vocoder.errors import VocoderError
from vocoder.evaluation import cli as eval_cli
from vocoder.flow import WaveFlow
from vocoder.inference import Vocoder, temper
from vocoder.options import SIGMA, Option

VOLUME = RequestOption(Option("volume", float, 1.0, "a throwaway option of this test", 0.0, 2.0),
                       {VOCODE: None, EDIT: None, TTS: None})


@pytest.fixture(scope="module")
def model() -> Vocoder:
    torch.set_num_threads(1)
    return tiny_vocoder()


def _query_parameter(spec: dict, path: str, name: str) -> dict | None:
    return next((p for p in spec["paths"][path]["post"]["parameters"] if p["name"] == name), None)


def _json_property(spec: dict, path: str, name: str) -> dict | None:
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema["properties"].get(name)


def _bounds(schema: dict) -> tuple[float, float]:
    """(minimum, maximum) of a property, also when it may be null (anyOf)."""
    typed = next(part for part in schema.get("anyOf", [schema]) if part.get("type") != "null")
    return typed["minimum"], typed["maximum"]


def test_a_request_option_declared_once_appears_in_every_form(model):
    with TestClient(create_app(Settings(), model=model, options=(*REQUEST_OPTIONS, VOLUME))) as client:
        wait_ready(client)
        spec = client.get("/openapi.json").json()
        for path in ["/v1/vocode", "/v1/edit"]:
            parameter = _query_parameter(spec, path, "volume")
            assert parameter is not None, path
            assert parameter["schema"]["maximum"] == 2.0 and parameter["schema"]["default"] == 1.0
        for path in ["/v1/vocode", "/v1/tts"]:
            assert _bounds(_json_property(spec, path, "volume")) == (0.0, 2.0), path
        assert "volume" in spec["components"]["schemas"]["Limits"]["properties"]
        assert client.get("/v1/models").json()["limits"]["volume"] == {"min": 0.0, "max": 2.0, "default": 1.0}

        mel = random_mel(20).tolist()
        assert client.post("/v1/vocode?volume=1.5&format=pcm", json={"mel": mel}).status_code == 200
        assert assert_error(client.post("/v1/vocode?volume=3", json={"mel": mel}), 422)["param"] == "volume"
        assert assert_error(client.post("/v1/vocode", json={"mel": mel, "volume": 3}), 422)["param"] == "volume"
    # Nothing leaks into an app made without it.
    plain = create_app(Settings(), model=model).openapi()
    assert _query_parameter(plain, "/v1/vocode", "volume") is None
    assert _json_property(plain, "/v1/tts", "volume") is None


def test_sigma_default_and_range_come_from_one_definition(model):
    parser = cli.build_parser()
    for command in [["synth", "m.npy"], ["resynth", "a.wav"], ["edit", "a.wav"]]:
        assert parser.parse_args([*command, "-o", "x.wav"]).sigma == SIGMA.default
    assert eval_cli.build_parser().parse_args(["--data", "."]).sigma == SIGMA.default
    for function in [Vocoder.infer, Vocoder.stream, Vocoder.resynthesize, WaveFlow.infer, latents.from_mel,
                     latents.redraw]:
        assert inspect.signature(function).parameters["sigma"].default == SIGMA.default, function
    assert latents.EDIT_SIGMA == SIGMA.default

    spec = create_app(Settings(), model=model).openapi()
    for path in ["/v1/vocode", "/v1/edit"]:
        schema = _query_parameter(spec, path, "sigma")["schema"]
        assert (schema["default"], schema["minimum"], schema["maximum"]) == (SIGMA.default, SIGMA.low, SIGMA.high)
    tts = _json_property(spec, "/v1/tts", "sigma")
    assert (tts["default"], *_bounds(tts)) == (SIGMA.default, SIGMA.low, SIGMA.high)
    assert _bounds(_json_property(spec, "/v1/vocode", "sigma")) == (SIGMA.low, SIGMA.high)

    # The library refuses what the CLI and the service refuse.
    latent = latents.from_mel(model, random_mel(10), seed=0)
    with pytest.raises(latents.EditError, match=r"sigma must be within 0-1\.5"):
        latents.redraw(latent, sigma=SIGMA.high + 0.1)
    with pytest.raises(VocoderError, match=r"sigma must be within 0-1\.5"):
        model.infer(torch.from_numpy(random_mel(10)), sigma=SIGMA.high + 0.1)


def test_sigma_reaches_the_flow_one_way_on_every_path(model):
    mel = torch.from_numpy(random_mel(12))[None].repeat(2, 1, 1)
    z = model.sample_latent(12, batch=2, seed=4)
    # The flow inverts the tempered latent as it is: sigma is applied once, not again in the flow.
    expected = model.fused.infer(mel, sigma=1.0, z=0.5 * z)
    assert torch.allclose(model.infer(mel, sigma=0.5, z=z), expected, atol=1e-6)
    # The batch path (one sigma per row) equals the stream path (one sigma for all).
    assert torch.equal(model.infer(mel, sigma=[0.5, 0.5], z=z), model.infer(mel, sigma=0.5, z=z))
    rows = model.infer(mel, sigma=[0.0, 0.5], z=z)
    assert torch.equal(rows[1], model.infer(mel, sigma=0.5, z=z)[1])
    assert torch.equal(rows[0], model.infer(mel, sigma=0.0, z=z)[0])
    # The edit path draws the same noise, tempered the same way.
    drawn = latents.from_mel(model, mel[0], sigma=0.5, seed=4).z
    assert torch.equal(drawn, temper(model.sample_latent(12, seed=4), 0.5))
    with pytest.raises(VocoderError, match="2 sigmas for a batch of 1"):
        temper(z[:1], [0.5, 0.5])

"""Tests of the text-to-mel flow (exact likelihood, masks, inference controls, checkpoints),
the espeak-ng fallback and `load_text_frontend`, ending with a tiny model overfitting two
real LJSpeech utterances."""
import json
import math
import time

import numpy as np
import pytest
import torch

from speech import speech_clip
from vocoder.audio import load_audio
from vocoder.errors import CheckpointError, VocoderError
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.text import SYMBOLS, TextError
from vocoder.text import checkpoint as tts_checkpoint
from vocoder.text import espeak
from vocoder.text import model as text_model
from vocoder.text.espeak import EspeakError, EspeakOutputTooLong, render_wav
from vocoder.text.frontend import EspeakFrontend, FlowTextFrontend, load_text_frontend
from vocoder.text.limits import SpeechTooLong
from vocoder.text.model import AcousticConfig, MelFlow, TextToMel, prepare_text

TINY = AcousticConfig(hidden_channels=16, n_conv_layers=1, n_attention_layers=1, n_heads=2, filter_channels=32,
                      dropout=0.0, duration_channels=16, n_blocks=2, decoder_layers=2, decoder_channels=16)


@pytest.fixture(autouse=True)
def one_thread():
    # On a machine shared with training runs, one thread is several times faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_decoder(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the identity-initialised actnorms and couplings random values, so the decoder
    actually transforms its input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "actnorms" in name or ".end." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def tiny_model(config: AcousticConfig = TINY, seed: int = 0) -> TextToMel:
    torch.manual_seed(seed)
    model = TextToMel(config)
    randomise_decoder(model, seed)
    return model.eval()


def padded_batch(ids: list[list[int]], mels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    padded = torch.full((len(mels), mels[0].shape[0], max(m.shape[1] for m in mels)), MelConfig().silence_value)
    for b, (item_ids, mel) in enumerate(zip(ids, mels)):
        tokens[b, : len(item_ids)] = torch.tensor(item_ids)
        padded[b, :, : mel.shape[1]] = mel
    return {"tokens": tokens, "token_lengths": torch.tensor([len(i) for i in ids]), "mels": padded,
            "mel_lengths": torch.tensor([m.shape[1] for m in mels])}


# -- config -------------------------------------------------------------------------------------

def test_config_round_trips_and_rejects_unknown_keys():
    assert AcousticConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown config key 'n_speakers'"):
        AcousticConfig.from_dict({**TINY.to_dict(), "n_speakers": 2})
    with pytest.raises(ValueError, match="n_heads 3 must divide hidden_channels 16"):
        TINY.__class__(**{**TINY.to_dict(), "n_heads": 3})
    assert AcousticConfig().n_symbols == len(SYMBOLS)


# -- the invertible decoder -------------------------------------------------------------------------

def test_decoder_inverts_exactly_with_exact_log_determinant():
    config = AcousticConfig(n_mels=3, n_blocks=2, decoder_layers=2, decoder_channels=8)
    torch.manual_seed(0)
    flow = MelFlow(config).double()
    randomise_decoder(flow)
    mel = torch.randn(1, 3, 6, dtype=torch.float64)
    lengths = torch.tensor([6])
    with torch.no_grad():
        z, log_det = flow(mel, lengths)
        assert torch.allclose(flow.reverse(z, lengths), mel, atol=1e-10)
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x.reshape(1, 3, 6), lengths)[0].flatten(),
                                                  mel.flatten())
    assert float(log_det[0]) == pytest.approx(float(torch.linalg.slogdet(jacobian)[1]), abs=1e-8)


def test_decoder_ignores_padding():
    torch.manual_seed(0)
    flow = MelFlow(TINY)
    randomise_decoder(flow)
    mel = torch.randn(2, TINY.n_mels, 10)
    lengths = torch.tensor([10, 6])
    with torch.no_grad():
        z, log_det = flow(mel, lengths)
        z_alone, log_det_alone = flow(mel[1:, :, :6], lengths[1:])
    assert torch.allclose(z[1, :, :6], z_alone[0], atol=1e-5)
    assert float(log_det[1]) == pytest.approx(float(log_det_alone[0]), rel=1e-5)
    assert torch.all(z[1, :, 6:] == 0)
    with pytest.raises(VocoderError, match="not multiples of 2"):
        flow(mel[:, :, :9], torch.tensor([9, 6]))


def test_latent_edits_decode_back_to_mels():
    model = tiny_model()
    mel = torch.randn(1, TINY.n_mels, 8)
    z = model.mel_to_latent(mel)
    assert torch.allclose(model.latent_to_mel(z), mel, atol=1e-4)
    edited = model.latent_to_mel(z * 0.5)
    assert edited.shape == mel.shape and not torch.allclose(edited, mel, atol=1e-2)


# -- loss ----------------------------------------------------------------------------------------------

def test_loss_of_padded_batch_matches_items_alone():
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    ids = [prepare_text("hello there")[1], prepare_text("hi")[1]]
    mels = [torch.randn(TINY.n_mels, 30, generator=generator) - 5,
            torch.randn(TINY.n_mels, 13, generator=generator) - 5]
    with torch.no_grad():
        batch = model.loss(padded_batch(ids, mels))
        alone = [model.loss(padded_batch([i], [m])) for i, m in zip(ids, mels)]
    # The 13-frame item loses its odd last frame to the squeeze: 30 + 12 frames in all.
    values = [30, 12]
    nll = sum(out["nll"] * v for out, v in zip(alone, values)) / sum(values)
    duration = sum(out["duration"] * len(i) for out, i in zip(alone, ids)) / sum(map(len, ids))
    assert float(batch["nll"]) == pytest.approx(float(nll), rel=1e-4)
    assert float(batch["duration"]) == pytest.approx(float(duration), rel=1e-4)
    assert float(batch["loss"]) == pytest.approx(float(batch["nll"] + batch["duration"]), rel=1e-6)


def test_loss_names_missing_fields_and_impossible_alignments():
    model = tiny_model()
    with pytest.raises(VocoderError, match="batch lacks fields \\['mel_lengths'\\]"):
        model.loss({"tokens": torch.ones(1, 3, dtype=torch.long), "token_lengths": torch.tensor([3]),
                    "mels": torch.zeros(1, TINY.n_mels, 4)})
    with pytest.raises(VocoderError, match="at least as many frames as tokens"):
        model.loss(padded_batch([[14] * 6], [torch.zeros(TINY.n_mels, 4)]))


# -- inference -----------------------------------------------------------------------------------------

def test_length_scale_scales_durations_and_seed_fixes_the_sample():
    model = tiny_model()
    with torch.no_grad():
        # Every token lasts exp(bias) = 3.5 frames before rounding up.
        model.duration.proj.weight.zero_()
        model.duration.proj.bias.fill_(math.log(3.5))
    text = "hello"  # five tokens
    assert model.synthesize(text, seed=0).shape == (TINY.n_mels, 5 * 4)
    # 5 * 7 = 35 frames, rounded up to the squeeze of 2.
    assert model.synthesize(text, length_scale=2.0, seed=0).shape == (TINY.n_mels, 36)
    assert torch.equal(model.synthesize(text, seed=3), model.synthesize(text, seed=3))
    assert not torch.equal(model.synthesize(text, seed=3), model.synthesize(text, seed=4))
    assert torch.equal(model.synthesize(text, noise_scale=0.0, seed=3), model.synthesize(text, noise_scale=0.0, seed=4))


def test_batched_inference_matches_single_items():
    model = tiny_model()
    ids = [prepare_text("a longer sentence")[1], prepare_text("short")[1]]
    tokens = padded_batch(ids, [torch.zeros(TINY.n_mels, 2)] * 2)["tokens"]
    mels, lengths = model.infer(tokens, torch.tensor([len(i) for i in ids]), noise_scale=0.0)
    for b, item_ids in enumerate(ids):
        alone, alone_lengths = model.infer(torch.tensor([item_ids]), noise_scale=0.0)
        assert int(lengths[b]) == int(alone_lengths[0]) and int(lengths[b]) % 2 == 0
        assert torch.allclose(mels[b, :, : lengths[b]], alone[0], atol=1e-4)


def test_bad_text_and_controls_fail_clearly():
    model = tiny_model()
    with pytest.raises(TextError, match="unsupported characters"):
        model.synthesize("smile \U0001F600")
    with pytest.raises(TextError, match="empty"):
        model.synthesize("  ")
    with pytest.raises(VocoderError, match="length_scale"):
        model.synthesize("hello", length_scale=0.0)
    with pytest.raises(VocoderError, match="noise_scale"):
        model.synthesize("hello", noise_scale=float("nan"))


# -- checkpoints and front-ends -----------------------------------------------------------------------

def test_checkpoint_round_trip_through_the_frontend(tmp_path):
    model = tiny_model()
    tts_checkpoint.save_model(tmp_path / "tts", model, MelConfig(), {"description": "tiny test model"})
    frontend = load_text_frontend(tmp_path / "tts")
    assert isinstance(frontend, FlowTextFrontend) and frontend.trained and frontend.name == "flow-tts"
    assert frontend.description.startswith("tiny test model")
    assert frontend.mel_config == MelConfig()
    expected = model.synthesize("Hi, 2 you.", seed=5)
    assert torch.equal(frontend.synthesize_mel("Hi, 2 you.", seed=5), expected)


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(symbols=SYMBOLS[:-1]), "symbol set"),
    (lambda raw: raw.update(format_version=99), "format version 99"),
    (lambda raw: raw.pop("kind"), "not a text-to-mel checkpoint"),
    (lambda raw: raw["acoustic"].update(n_speakers=2), "unknown config key 'acoustic.n_speakers'"),
    (lambda raw: raw["mel"].update(n_mels=64), "makes 80 mel bands, mel config gives 64"),
])
def test_checkpoint_mismatches_fail_loudly(tmp_path, change, message):
    path = tts_checkpoint.save_model(tmp_path / "tts", tiny_model(), MelConfig())
    raw = json.loads((path / "config.json").read_text())
    change(raw)
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message):
        load_text_frontend(path)


def test_checkpoint_weights_must_fit_the_config(tmp_path):
    path = tts_checkpoint.save_model(tmp_path / "tts", tiny_model(), MelConfig())
    raw = json.loads((path / "config.json").read_text())
    raw["acoustic"]["n_blocks"] = 3
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        load_text_frontend(path)


def test_fallback_unless_a_model_is_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(tts_checkpoint, "BUNDLED_DIR", tmp_path / "tts")
    with pytest.warns(UserWarning, match="espeak-ng fallback, not a trained model"):
        frontend = load_text_frontend()
    assert isinstance(frontend, EspeakFrontend) and not frontend.trained
    assert frontend.name == "espeak-ng-fallback" and "NOT a trained" in frontend.description
    tts_checkpoint.save_model(tmp_path / "tts", tiny_model(), MelConfig())
    assert isinstance(load_text_frontend(), FlowTextFrontend)


def test_espeak_fallback_makes_mels_in_the_shared_convention():
    frontend = EspeakFrontend()
    mel = frontend.synthesize_mel("Hello world, this is 1 test.")
    assert mel.dtype == torch.float32 and mel.shape[0] == 80
    # espeak-ng reads this in about two seconds: 22050 / 256 = 86 frames a second.
    assert 80 < mel.shape[1] < 400
    assert torch.isfinite(mel).all() and float(mel.min()) >= MelConfig().silence_value - 1e-4
    slow = frontend.synthesize_mel("Hello world, this is 1 test.", length_scale=2.0)
    assert slow.shape[1] > 1.4 * mel.shape[1]
    assert torch.equal(frontend.synthesize_mel("Hello world, this is 1 test.", noise_scale=0.1, seed=3), mel)


def test_espeak_reads_option_like_text_aloud():
    # Passed as an argument, this would print espeak-ng's help instead of speech.
    wav = render_wav("--help")
    audio = load_audio(wav, 22050)
    assert 0.2 < audio.size / 22050 < 3.0


def test_espeak_errors_are_clear():
    with pytest.raises(EspeakError, match="install the Debian package espeak-ng"):
        EspeakFrontend(executable="espeak-ng-not-installed")
    with pytest.raises(EspeakError, match="took longer than"):
        render_wav("a long sentence " * 50, timeout_s=1e-6)
    with pytest.raises(TextError):
        EspeakFrontend().synthesize_mel("\U0001F600")


# -- bounded work: a short text must not make minutes of speech ----------------------------------------
PROSE = ("Printing, in the only sense with which we are at present concerned, differs from most if not from all "
         "the arts and crafts represented in the Exhibition. ")


def test_espeak_is_stopped_once_its_output_passes_max_samples():
    started = time.perf_counter()
    with pytest.raises(EspeakOutputTooLong, match="longer than 22050 samples"):
        render_wav(PROSE * 20, max_samples=espeak.SAMPLE_RATE)  # about 3 minutes of speech
    assert time.perf_counter() - started < 2.0
    assert len(render_wav("Hello.", max_samples=espeak.SAMPLE_RATE)) <= 44 + 2 * espeak.SAMPLE_RATE


def test_espeak_fallback_refuses_long_speech_before_building_it(monkeypatch):
    frontend = EspeakFrontend()
    renders = []
    monkeypatch.setattr(espeak, "render_wav", lambda *args: renders.append(args) or pytest.fail("espeak-ng ran"))
    # 4096 digits are 4096 spoken words: refused from the text alone, at every speed.
    for length_scale in (0.25, 1.0, 4.0):
        assert frontend.min_frames("9" * 4096, length_scale) > 5168
        with pytest.raises(SpeechTooLong, match="estimated") as refused:
            frontend.synthesize_mel("9" * 4096, length_scale=length_scale, max_frames=5168)
        assert refused.value.estimated and refused.value.frames > 5168
    assert not renders


def test_espeak_fallback_stops_speech_the_estimate_let_through(monkeypatch):
    frontend = EspeakFrontend()
    analysed = []
    monkeypatch.setattr(frontend, "_mel", lambda audio: analysed.append(audio) or pytest.fail("mel was built"))
    # Within the estimate (a few seconds of letters), but espeak-ng reads it in about 10 s.
    assert frontend.min_frames(PROSE) < 200
    with pytest.raises(SpeechTooLong, match="the limit is 200"):
        frontend.synthesize_mel(PROSE, max_frames=200)
    assert not analysed
    # The estimate stays below what espeak-ng really says, and the limit lets real speech through.
    for text in [PROSE, "Hello world.", "9" * 40, "Dr. Smith paid $3.50 at 5 pm."]:
        mel = EspeakFrontend().synthesize_mel(text, max_frames=2000)
        assert frontend.min_frames(text) < mel.shape[1]


def test_flow_refuses_long_speech_before_the_alignment_and_the_mel(monkeypatch):
    model = tiny_model().eval()
    monkeypatch.setattr(text_model, "path_from_durations", lambda *args: pytest.fail("alignment was built"))
    ids = torch.tensor([prepare_text("Hello world, this is a test.")[1]])
    with pytest.raises(SpeechTooLong, match="the limit is 40") as refused:
        model.infer(ids, length_scale=4.0, max_frames=40)
    assert not refused.value.estimated  # the durations are known exactly
    encodes = []
    monkeypatch.setattr(model, "encode", lambda *args: encodes.append(args) or pytest.fail("encoder ran"))
    with pytest.raises(SpeechTooLong) as refused:
        model.infer(ids, max_frames=ids.shape[1] - 1)  # every token lasts a frame or more
    assert refused.value.estimated and not encodes
    frontend = FlowTextFrontend(tiny_model(), MelConfig(), "tiny")
    assert frontend.min_frames("Hello world, this is a test.") == ids.shape[1]


# -- overfitting real speech -----------------------------------------------------------------------------

CLIPS = [("LJ001-0008", "has never been surpassed."), ("LJ001-0002", "in being comparatively modern.")]


def test_tiny_model_overfits_two_utterances():
    """A tiny model (about 250 k parameters) trained for 150 Adam steps on two real
    LJSpeech clips (1.8 s and 1.9 s, full length) must:

    - bring the NLL from over 10 nats per mel value at initialisation down by at least
      90%, and at least 0.5 nats per mel value below a text-blind baseline: one Gaussian
      per mel band fitted to the same frames (about 1.94 nats per value);
    - learn the durations found by monotonic alignment search (duration loss < 0.05),
      so that inference predicts each clip's length within 15%.
    Takes 7-15 s on one busy core.
    """
    mel_front_end = MelSpectrogram(MelConfig())
    mels = [mel_front_end(torch.from_numpy(load_audio(speech_clip("ljspeech", clip), 22050)))[0]
            for clip, _ in CLIPS]
    ids = [prepare_text(text)[1] for _, text in CLIPS]
    batch = padded_batch(ids, mels)
    frames = torch.cat(mels, dim=1)
    baseline = float(frames.std(dim=1).log().mean()) + 0.5 + 0.5 * math.log(2 * math.pi)

    torch.manual_seed(0)
    model = TextToMel(AcousticConfig(hidden_channels=32, n_conv_layers=1, n_attention_layers=1,
                                     filter_channels=64, dropout=0.0, duration_channels=32, n_blocks=4,
                                     decoder_layers=2, decoder_channels=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, foreach=True)
    history = []
    start = time.perf_counter()
    for _ in range(150):
        losses = model.loss(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in losses.items()})
    elapsed = time.perf_counter() - start
    first = history[0]
    last = {name: np.mean([h[name] for h in history[-10:]]) for name in first}
    print(f"\noverfit: {elapsed:.1f} s; first {first}; mean of last 10 {last}; baseline nll {baseline:.3f}")
    assert first["nll"] > 10
    assert last["nll"] < 0.1 * first["nll"]
    assert last["nll"] < baseline - 0.5
    assert last["duration"] < 0.05
    model.eval()
    _, lengths = model.infer(batch["tokens"], batch["token_lengths"], noise_scale=0.0)
    for predicted, actual in zip(lengths.tolist(), batch["mel_lengths"].tolist()):
        assert abs(predicted - actual) < 0.15 * actual

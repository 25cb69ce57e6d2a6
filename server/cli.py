"""`vocoder serve`: run the HTTP service with uvicorn. Options override the VOCODER_* environment;
the models are loaded before the server starts so that a bad checkpoint, or a text front-end whose
mel config differs from the vocoder's, fails at once, in one line.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp
from uvicorn.main import STARTUP_FAILURE

from server.app import create_app
from server.service import load_model, load_text
from server.settings import Settings
from vocoder.errors import VocoderError
from vocoder.text.espeak import EspeakError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vocoder serve", description="Run the vocoder HTTP service (see docs/SERVICE.md). "
        "Every option can also be set as a VOCODER_* environment variable; options win.")
    # Defaults are None so an unset option leaves the environment (or the built-in default) in force.
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; VOCODER_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000; VOCODER_PORT)")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model; VOCODER_CHECKPOINT)")
    parser.add_argument("--tts-checkpoint", help="text-to-mel checkpoint directory (default: the bundled one, else "
                                                 "the espeak-ng fallback; VOCODER_TTS_CHECKPOINT)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto; VOCODER_DEVICE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        print(f"vocoder serve: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(settings)
        text_frontend = load_text(settings, model)
    except EspeakError:
        text_frontend = None  # not fatal: the app logs it at startup and its text endpoints answer 503
    except (VocoderError, OSError) as error:
        print(f"vocoder serve: error: {error}", file=sys.stderr)
        return 2
    return serve_until_stopped(create_app(settings, model, text_frontend), settings)


def serve_until_stopped(app: ASGIApp, settings: Settings) -> int:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully; the exit status: 0 after a
    graceful shutdown, uvicorn's startup-failure status when it never started serving.

    uvicorn re-raises the stopping signal once its shutdown is done, so that the process dies of it.
    As PID 1 the kernel ignores that, but under an init (`docker run --init`, compose `init: true`,
    tini) the process is killed and the container exits 143 after a clean stop. Our own handlers are
    the ones uvicorn restores and re-raises to, so the re-raise lands here and the exit stays 0.
    """
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level))

    def stop(signum: int, frame: FrameType | None) -> None:
        # Also reached by a signal that comes before uvicorn installs its own handlers: the server
        # then stops right after starting instead of ignoring it.
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())

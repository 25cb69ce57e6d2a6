"""The CPU image, for real: builds it and runs docker/smoke-test.sh (serve, vocode a clip, check the
WAV, /metrics, the health check and a clean stop). Needs a Docker engine; `-m docker` selects it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TEST = ROOT / "docker" / "smoke-test.sh"


def _no_engine_reason() -> str | None:
    """Why no Docker engine can be used here, or None when `docker info` succeeds."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 60 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine: `docker info` failed: {lines[-1] if lines else info.returncode}"
    return None


@pytest.mark.docker
@pytest.mark.timeout(3600)  # a cold build downloads and installs torch and the service's deps
def test_cpu_image_smoke_test() -> None:
    reason = _no_engine_reason()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(["bash", str(SMOKE_TEST)], cwd=ROOT, capture_output=True, text=True,
                            timeout=3500)
    print(result.stdout)
    assert result.returncode == 0, f"smoke test failed:\n{result.stdout}\n{result.stderr}"
    assert "smoke test passed" in result.stdout

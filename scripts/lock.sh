#!/usr/bin/env bash
# Regenerates requirements/lock.txt, the constraints scripts/install.sh installs with: all extras
# of pyproject.toml, resolved for CPython 3.11 on Linux x86_64, held to requirements/pins.txt.
# Run it after changing a dependency or a pin, then run the tests before committing the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v uv >/dev/null 2>&1 || { echo "error: uv not found; install it with: pip install uv" >&2; exit 2; }
uv pip compile pyproject.toml \
  --extra train --extra serve --extra eval --extra dev \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --constraint requirements/pins.txt \
  --custom-compile-command "bash scripts/lock.sh" \
  --output-file requirements/lock.txt "$@"

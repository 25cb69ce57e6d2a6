#!/usr/bin/env bash
# Installs everything the project needs, system packages included; safe to re-run.
# Python packages go into the active environment (a venv when one is activated), held to the
# versions in requirements/lock.txt (refresh: scripts/lock.sh), so a new release upstream
# cannot break a fresh install. TORCH_SPEC overrides the torch requirement (e.g. a CUDA build);
# by default the lock's torch 2.13.0 is used, the CPU wheel where the machine offers it, which
# avoids GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(espeak-ng)
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: no apt-get; install these yourself: ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
LOCK=requirements/lock.txt
torch_installed=false
"$PYTHON" -c "import torch" >/dev/null 2>&1 && torch_installed=true
# A torch from TORCH_SPEC, or one already installed (kept, as before: replacing it can cost
# GBs), must not be fought by the lock's torch pin or by the CUDA stack PyPI's torch pulls in.
constraints=$LOCK
if [ -n "${TORCH_SPEC:-}" ] || $torch_installed; then
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  grep -v -E '^(torch|triton|nvidia-[^=]+|cuda-[^=]+)==' "$LOCK" >"$constraints"
fi
if ! $torch_installed; then
  "$PYTHON" -m pip install -q -c "$constraints" "${TORCH_SPEC:-torch}"
fi
"$PYTHON" -m pip install -q -c "$constraints" -e ".[train,serve,eval,dev]"
# NVIDIA's reference implementation, only for the equivalence tests and the speed
# benchmark; its declared dependencies are heavy and unused, hence --no-deps.
"$PYTHON" -m pip install -q --no-deps "waveglow==22.12.28"

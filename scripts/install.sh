#!/usr/bin/env bash
# Installs everything the project needs, system packages included; safe to re-run.
# TORCH_SPEC overrides the torch requirement (e.g. a CUDA build); by default the CPU
# wheel 2.13.0 is used where the machine offers it, which avoids GBs of CUDA packages.
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
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PYTHON" -m pip install -q -e ".[train,serve,eval,dev]"
# NVIDIA's reference implementation, only for the equivalence tests and the speed
# benchmark; its declared dependencies are heavy and unused, hence --no-deps.
"$PYTHON" -m pip install -q --no-deps "waveglow==22.12.28"

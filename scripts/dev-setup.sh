#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian/Ubuntu machine (CPU only):
# OBS Studio + Xvfb for the real-OBS tests, Chromium + its WebDriver for the control-page tests,
# CPU torch first, then dreamcam with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v obs >/dev/null 2>&1 || ! command -v Xvfb >/dev/null 2>&1 \
   || ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq obs-studio xvfb xauth chromium chromium-driver >/dev/null
fi
# A JACK server (its dummy driver needs no sound card) gives the MIDI tests a real virtual port
# where the kernel's ALSA sequencer (/dev/snd/seq) is missing, as in containers.
if ! command -v jackd >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends jackd2 >/dev/null
fi
# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[all,test]"

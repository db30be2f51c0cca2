#!/usr/bin/env bash
# Installs what lego needs and is missing, and nothing else; safe to run again.
#   - Debian packages (compiler, CMake, Ninja, Boost, OpenCV, FFmpeg, sentencepiece, GoogleTest, ...)
#   - a Python virtual environment with the pinned packages of python/requirements.txt, outside the clone
#     (LEGO_VENV, default ~/.cache/lego/venv), brought up to date when that file changes. Its torch is
#     also the libtorch the C++ build links against.
#   - the reference readers of bench/requirements.txt (torchcodec, decord) into the same environment
# A user with their own libtorch sets Torch_DIR (or LEGO_TORCH_DIR) and torch is then left alone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
req=$root/python/requirements.txt
req_nodeps=$root/python/requirements-nodeps.txt
req_bench=$root/bench/requirements.txt

debs=(build-essential cmake ninja-build ccache pkg-config git python3-venv python3-dev
      libboost-dev libboost-program-options-dev libopencv-dev
      libavformat-dev libavcodec-dev libavutil-dev libswscale-dev libswresample-dev libavdevice-dev
      libsentencepiece-dev nlohmann-json3-dev zlib1g-dev libspdlog-dev libfmt-dev libgtest-dev libbenchmark-dev
      libgloo-dev libcpp-httplib-dev chromium chromium-driver)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The venv's python must be able to create venvs; Debian's python3 needs python3-venv (installed above).
py=${LEGO_PYTHON:-python3}
stamp=$venv/.lego-requirements.sha256
want=$(cat "$req" "$req_nodeps" "$req_bench" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: preparing the Python environment in $venv"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [ -n "${LEGO_TORCH_DIR:-${Torch_DIR:-}}" ]; then
    # Own libtorch: install everything but torch (parity tests then need a torch importable by Python).
    grep -v '^torch==' "$req" | "$venv/bin/python" -m pip install -q -r /dev/stdin
  else
    "$venv/bin/python" -m pip install -q -r "$req"
  fi
  "$venv/bin/python" -m pip install -q --no-deps -r "$req_nodeps"
  "$venv/bin/python" -m pip install -q -r "$req_bench"
  echo "$want" >"$stamp"
fi

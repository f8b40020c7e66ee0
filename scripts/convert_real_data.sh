#!/usr/bin/env bash
# Converts every real dataset into one MVTec-layout root (default /tmp/real), seed 0, and prints the counts
# (`edgead data show`). Usage: scripts/convert_real_data.sh [OUT] [SHARED_DATA]
# SHARED_DATA defaults to ../shared/data; ELPV comes from the pip package elpv-dataset (the `data` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/real}
SRC=${2:-../shared/data}
EDGEAD=${EDGEAD:-"python -m edgead"}
$EDGEAD data convert magnetic-tile "$SRC/magnetic-tile" "$OUT" --overwrite
$EDGEAD data convert battery-weld "$SRC/battery-weld" "$OUT" --overwrite
$EDGEAD data convert battery-weld "$SRC/battery-weld" "$OUT" --variant denoised --overwrite
$EDGEAD data convert bsdata "$SRC/bsdata" "$OUT" --overwrite
$EDGEAD data convert mpdd-metal-plate "$SRC/mpdd-metal-plate" "$OUT" --overwrite
$EDGEAD data convert elpv package "$OUT" --overwrite
$EDGEAD data show "$OUT"

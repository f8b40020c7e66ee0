#!/usr/bin/env bash
# Builds .venv-device: what a Raspberry Pi / Coral board has. numpy < 2, pillow, tflite-runtime 2.14.0 (it needs
# numpy < 2, so it cannot live beside the host's numpy 2) and onnxruntime; this project installed with --no-deps
# so firmware_sim is importable. No torch, no tensorflow, no click. Idempotent: a complete venv is reused as is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DEVICE_VENV:-.venv-device}
STAMP="$VENV/.edgead-device-ok"
REQS='numpy<2 pillow tflite-runtime==2.14.0 onnxruntime'
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQS" ] && "$VENV/bin/python" -c "import firmware_sim, tflite_runtime" 2>/dev/null; then
    echo "$VENV is up to date"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $REQS
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import sys
import numpy, onnxruntime, tflite_runtime  # noqa: F401
import firmware_sim.runtime as rt
assert numpy.__version__.startswith("1."), numpy.__version__
assert rt.tflite_module()[0] == "tflite_runtime.interpreter"
for heavy in ("torch", "tensorflow", "click"):
    try:
        __import__(heavy)
    except ImportError:
        continue
    sys.exit(f"{heavy} is importable in the device environment: it must not be")
print("device environment ok: numpy", numpy.__version__, "tflite-runtime", tflite_runtime.__version__)
PY
echo "$REQS" > "$STAMP"

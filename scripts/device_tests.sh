#!/usr/bin/env bash
# The device-only environment end to end: builds .venv-device (scripts/device_env.sh: numpy<2, pillow,
# tflite-runtime 2.14.0, onnxruntime, no torch/tensorflow/click), then runs `python -m firmware_sim run`,
# `buffer stats` and `profile` there on an artifact folder exported by the host, and checks the output, the
# scores against the host's interpreter (ai-edge-litert; a few LSB apart by design) and that nothing host-side
# was imported.
# Usage: scripts/device_tests.sh [ARTIFACT_DIR]   (without one, a tiny run is trained and exported with .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/device_env.sh 2> >(grep -v "^WARNING: Location" >&2)
DEV=$PWD/.venv-device/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3
ART=${1:-}
if [ -z "$ART" ]; then
    (
        . .venv/bin/activate
        export EDGEAD_WEIGHTS_DIR=${EDGEAD_WEIGHTS_DIR:-$PWD/../shared/weights/mcunet-in3}
        edgead data synth "$WORK/data" --image-size 64 --train 12 --test 4 --categories nut >/dev/null
        edgead train --data "$WORK/data" --tasks nut --image-size 64 --epochs 1 --out "$WORK/run" --quiet >/dev/null 2>&1
        edgead export --run "$WORK/run" --format tflite-int8,onnx-int8 --out "$WORK/art" --calibration 8 \
            --allow-drift --quiet >/dev/null 2>&1
    )
    ART=$WORK/art
fi
# A budget of a few latents of this artifact's own size (a 256-px latent is 3x the whole 8 KB of a 64-px one).
BUDGET=$("$DEV" -c "import json, math, sys; d = json.load(open(sys.argv[1] + '/manifest.json'));
print(4 * math.prod(d['latent']['shape_chw']) + 2048)" "$ART")
# --keep all below: this checks the buffer's mechanics, and a one-epoch model calls most frames anomalous
# (the default --keep normal would store none of them).
# Camera-like frames made on the device itself: RGB of another size, grayscale, 16-bit, RGBA, and a stray file.
"$DEV" - "$WORK/imgs" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
d = Path(sys.argv[1]); d.mkdir()
rng = np.random.default_rng(0)
# smooth blobs, not pixel noise: noise makes any int8 net chaotic (docs/toolchain.md)
rgb = Image.fromarray(rng.integers(60, 200, (6, 8, 3), dtype=np.uint8)).resize((120, 90), Image.BILINEAR)
rgb.save(d / "rgb.png"); rgb.convert("L").save(d / "gray.png"); rgb.convert("RGBA").save(d / "rgba.png")
Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(d / "gray16.png")
(d / "notes.txt").write_text("not an image")
PY
"$DEV" -m firmware_sim run --artifact "$ART" --images "$WORK/imgs" --out "$WORK/ov" --buffer "$WORK/buf.bin" \
    --budget "$BUDGET" --task 0 --keep all >"$WORK/device.jsonl" 2>"$WORK/device.err"
"$DEV" -m firmware_sim buffer stats "$WORK/buf.bin" >"$WORK/stats.json"
"$DEV" -m firmware_sim profile --artifact "$ART" --runs 20 --budget "$BUDGET" --json >"$WORK/profile.json"
.venv/bin/python -m firmware_sim run --artifact "$ART" --images "$WORK/imgs" >"$WORK/host.jsonl" 2>/dev/null
set +e
"$DEV" - "$WORK" "$BUDGET" <<'PY'
import json, sys
from pathlib import Path
w, budget = Path(sys.argv[1]), int(sys.argv[2])
lines = [json.loads(x) for x in (w / "device.jsonl").read_text().splitlines()]
host = {d["path"]: d["score"] for d in map(json.loads, (w / "host.jsonl").read_text().splitlines())}
err = (w / "device.err").read_text()
assert len(lines) == 4, lines
assert "skipped 1 non-image" in err and "Traceback" not in err, err
for d in lines:
    assert d["decision"] in ("normal", "anomalous") and 0 <= d["normalized_score"] <= 1 and d["latency_ms"] > 0
    assert Path(d["overlay"]).is_file()
    rel = abs(d["score"] - host[d["path"]]) / max(abs(host[d["path"]]), 1e-12)
    assert rel < 0.15, (d["path"], d["score"], host[d["path"]])  # tflite-runtime vs ai-edge-litert: a few LSB
stats = json.loads((w / "stats.json").read_text())
assert stats["codec"] == "int8-device" and stats["records"] >= 1 and stats["file_bytes"] <= budget, stats
assert stats["load"]["dropped"] == 0 and stats["offered_per_task"]["0"] == 4
prof = json.loads((w / "profile.json").read_text())
assert prof["interpreter"] == "tflite_runtime.interpreter", prof["interpreter"]
assert prof["latency_ms"]["p50"] > 0 and prof["ram"]["peak_rss_bytes"] > 0 and prof["profiles"]
print(f"device env ok: {len(lines)} images via {prof['interpreter']}, p50 {prof['latency_ms']['p50']:.2f} ms, "
      f"peak RSS {prof['ram']['peak_rss_bytes'] / 2**20:.1f} MiB, buffer {stats['records']} records "
      f"{stats['file_bytes']} B; max score gap to ai-edge-litert "
      f"{max(abs(d['score'] - host[d['path']]) / host[d['path']] for d in lines):.2%}")
PY
rc=$?
[ $rc -eq 0 ] || { echo "device tests FAILED"; cat "$WORK/device.err" >&2; exit $rc; }

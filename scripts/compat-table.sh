#!/usr/bin/env bash
# scripts/compat-table.sh — the PostgreSQL compatibility table, from the version-matrix test results.
#
# Usage: scripts/compat-table.sh [--check | --print] [--subset-only] [--majors 10,11,...] [--dir DIR] [--readme FILE]
#
# tests/matrix.rs writes one JSON file per major it ran (pgN.json: the major, the server version and,
# per feature, pass / fail / skipped / not_run), and one per major for `walrelay subset` (pgN-subset.json:
# that major as the source of a subset into the newest major of the run, and as its target). This
# script turns them into two Markdown tables (major × feature) and:
#
#   (default)  rewrites the README sections between `<!-- compat-table:start -->` and
#              `<!-- compat-table:end -->`, and between `<!-- subset-compat-table:start -->` and
#              `<!-- subset-compat-table:end -->` (README.md is created with just these if it does not
#              exist; a section is appended if its markers are missing), and prints the tables;
#   --check    writes nothing; prints one line per major (`PostgreSQL 13: pass` or the failed features)
#              and the table, and says whether the README's section is up to date — what CI runs;
#   --print    prints the table only.
#
# --subset-only reads, checks and writes only the `walrelay subset` table (after
# `cargo test --test matrix subset`, which runs only that part of the matrix).
#
# The majors are --majors, else WALRELAY_PG_MAJORS, else 10-18. Every one of them must have a result:
# a listed major without one makes the script fail (exit 1) — in every mode, and before anything is
# written. With --check, a failed feature fails the script too. The results are read from --dir, else
# $WALRELAY_MATRIX_DIR, else $CARGO_TARGET_DIR/matrix, else target/matrix (the rule tests/matrix.rs
# writes by).
#
# Needs python3 (on every machine the project runs on) for reading the JSON.
set -euo pipefail

cd "$(dirname "$0")/.." || exit 1

mode=write
only=all
majors="${WALRELAY_PG_MAJORS:-}"
dir=""
readme="README.md"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --check) mode=check; shift ;;
        --print) mode=print; shift ;;
        --subset-only) only=subset; shift ;;
        --majors)
            [ "$#" -ge 2 ] || { echo "compat-table.sh: --majors needs a value" >&2; exit 2; }
            majors=$2; shift 2 ;;
        --majors=*) majors=${1#--majors=}; shift ;;
        --dir)
            [ "$#" -ge 2 ] || { echo "compat-table.sh: --dir needs a value" >&2; exit 2; }
            dir=$2; shift 2 ;;
        --dir=*) dir=${1#--dir=}; shift ;;
        --readme)
            [ "$#" -ge 2 ] || { echo "compat-table.sh: --readme needs a value" >&2; exit 2; }
            readme=$2; shift 2 ;;
        --readme=*) readme=${1#--readme=}; shift ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0 ;;
        *)
            echo "compat-table.sh: unknown argument '$1' (see --help)" >&2
            exit 2 ;;
    esac
done

if [ -z "$dir" ]; then
    if [ -n "${WALRELAY_MATRIX_DIR:-}" ]; then
        dir=$WALRELAY_MATRIX_DIR
    else
        dir="${CARGO_TARGET_DIR:-target}/matrix"
    fi
fi
[ -n "$majors" ] || majors="10,11,12,13,14,15,16,17,18"

command -v python3 >/dev/null 2>&1 || {
    echo "compat-table.sh: python3 is needed to read the results (apt-get install -y python3)" >&2
    exit 1
}

exec python3 - "$mode" "$majors" "$dir" "$readme" "$only" <<'PYTHON'
import json
import os
import sys
import textwrap

mode, majors_arg, results_dir, readme, only = sys.argv[1:6]
subset_only = only == "subset"

START = "<!-- compat-table:start -->"
END = "<!-- compat-table:end -->"
SUBSET_START = "<!-- subset-compat-table:start -->"
SUBSET_END = "<!-- subset-compat-table:end -->"

# JSON key, column title; the order of the table.
FEATURES = [
    ("check", "check"),
    ("bootstrap", "bootstrap"),
    ("standby", "hot standby"),
    ("manifest", "manifest verification"),
    ("receive", "receive"),
    ("slots", "slots"),
    ("timeline", "failover following"),
    ("sidecar", "sidecar"),
    ("relay", "relay (serve)"),
]
SUBSET_FEATURES = [("source", "source"), ("target", "target")]
SYMBOL = {"pass": "✅", "fail": "❌", "skipped": "—", "not_run": "❔"}


def die(msg):
    print(f"compat-table.sh: {msg}", file=sys.stderr)
    sys.exit(1)


majors = []
for part in majors_arg.split(","):
    part = part.strip()
    if not part:
        continue
    if not part.isdigit() or not 10 <= int(part) <= 18:
        die(f"major {part!r} is not one of 10-18")
    if int(part) not in majors:
        majors.append(int(part))
majors.sort()

def load(suffix, features):
    found = {}
    missing = []
    for major in majors:
        path = os.path.join(results_dir, f"pg{major}{suffix}.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            missing.append(major)
            continue
        except (OSError, ValueError) as e:
            die(f"{path}: unreadable result ({e}); run the matrix test again")
        if data.get("major") != major:
            die(f"{path}: holds the result of major {data.get('major')!r}, not {major}")
        feats = data.get("features")
        if not isinstance(feats, dict):
            die(f"{path}: no 'features' object")
        for key, _ in features:
            status = feats.get(key, {}).get("status")
            if status not in SYMBOL:
                die(f"{path}: feature {key!r} has status {status!r}, not one of {sorted(SYMBOL)}")
        found[major] = data
    if missing:
        die(
            f"no matrix result pgN{suffix}.json for PostgreSQL "
            + ", ".join(str(m) for m in missing)
            + f" in {results_dir}: run `WALRELAY_PG_MAJORS={majors_arg} cargo test --test matrix` "
            "(scripts/test.sh does) and look at that test's output"
        )
    return found


results = {} if subset_only else load("", FEATURES)
subset_results = load("-subset", SUBSET_FEATURES)
newest = max((d.get("newest") or 0 for d in subset_results.values()), default=0) or max(majors)


def short_version(v):
    # "15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
    return (v or "?").split()[0]


def table(results=results, features=FEATURES):
    lines = [
        "| PostgreSQL | server | " + " | ".join(title for _, title in features) + " |",
        "|---|---|" + "---|" * len(features),
    ]
    notes = {}
    for major in majors:
        data = results[major]
        cells = []
        for key, title in features:
            entry = data["features"][key]
            status = entry["status"]
            cell = SYMBOL[status]
            if status == "skipped" and entry.get("detail"):
                # One footnote per distinct reason.
                n = notes.setdefault(entry["detail"], len(notes) + 1)
                cell += f"<sup>{n}</sup>"
            cells.append(cell)
        lines.append(
            f"| {major} | {short_version(data.get('server_version'))} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines.append(
        "✅ passed · ❌ failed · — does not exist on that major · ❔ not checked, because a step it "
        "builds on failed"
    )
    for detail, n in notes.items():
        lines.append("")
        lines.append(f"<sup>{n}</sup> {detail}.")
    return "\n".join(lines) + "\n"


def section():
    intro = textwrap.fill(
        "walrelay is tested against every PostgreSQL major from 10 to 18 (`tests/matrix.rs`, run by CI "
        "with `WALRELAY_PG_MAJORS=10,…,18`): `walrelay check`; `bootstrap` with a tablespace "
        "mapping and a new slot while pgbench writes, with the standby configuration each major "
        "reads (recovery.conf for 10 and 11, standby.signal from 12); the result started as a hot "
        "standby that catches up with the primary; the backup manifest (13 to 16 by "
        "pg_verifybackup, 17 and 18 — manifest version 2 — by the SHA-256 of every file); "
        "`receive` across segment switches, byte-identical to the server's own WAL files; slots "
        "created, advanced and dropped; a failover followed through a host list (the primary crashed, "
        "its standby promoted) onto the new timeline, the slot kept on the standby by `--failover` "
        "from 11; a standby "
        "fed through `receive --pg-wal` (sidecar); and a standby of that major seeded by `bootstrap` "
        "through `walrelay serve` and streaming from the relay (relay).",
        width=104,
        break_on_hyphens=False,
    )
    return (
        f"{START}\n"
        + intro
        + "\n\n"
        + table()
        + "\nGenerated by `scripts/compat-table.sh` from the test results; do not edit by hand.\n"
        f"{END}\n"
    )


def subset_section():
    intro = textwrap.fill(
        f"`walrelay subset` is tested with every major as the source of a subset into the newest major "
        f"({newest}), and as its target from the newest (`tests/matrix.rs`, `matrix_subset_pgN`; "
        f"so {majors[0]} → {newest} and {newest} → {majors[0]} among them): the tables created on the "
        "target from the source's catalogs and copied; then updates that leave a TOASTed value alone, "
        "deletes, TRUNCATE (sources from 11), a column added with a default and one dropped — followed "
        "on the target —, a 3 000-row transaction (streamed before its commit from a 14+ source), a "
        "table without a key under REPLICA IDENTITY FULL with two identical rows and json; every row "
        "compared on both sides, and `subset drop` leaving the target's identity sequence beyond every "
        "value the source handed out.",
        width=104,
        break_on_hyphens=False,
    )
    titles = [("source", f"as source, into {newest}"), ("target", f"as target, from {newest}")]
    return (
        f"{SUBSET_START}\n"
        + intro
        + "\n\n"
        + table(subset_results, titles)
        + "\nGenerated by `scripts/compat-table.sh` from the test results; do not edit by hand.\n"
        f"{SUBSET_END}\n"
    )


def first_line(text):
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "failed (no message)"


def per_major_lines():
    out = []
    for major in [] if subset_only else majors:
        data = results[major]
        failed = [k for k, _ in FEATURES if data["features"][k]["status"] == "fail"]
        not_run = [k for k, _ in FEATURES if data["features"][k]["status"] == "not_run"]
        version = short_version(data.get("server_version"))
        if failed:
            causes = "; ".join(f"{k}: {first_line(data['features'][k].get('detail'))}" for k in failed)
            line = f"PostgreSQL {major} ({version}): FAILED — {causes}"
        elif not_run:
            line = f"PostgreSQL {major} ({version}): INCOMPLETE — not run: {', '.join(not_run)}"
        else:
            line = f"PostgreSQL {major} ({version}): pass"
        out.append((line, bool(failed or not_run)))
    for major in majors:
        data = subset_results[major]
        bad = [k for k, _ in SUBSET_FEATURES if data["features"][k]["status"] != "pass"]
        if bad:
            causes = "; ".join(
                f"{k}: {first_line(data['features'][k].get('detail'))}" for k in bad
            )
            out.append((f"PostgreSQL {major} subset: FAILED — {causes}", True))
        else:
            out.append((f"PostgreSQL {major} subset: pass (to and from {newest})", False))
    return out


def current_section(text, start=START, end=END):
    s = text.find(start)
    e = text.find(end)
    if s == -1 or e == -1 or e < s:
        return None
    return text[s : e + len(end)] + "\n"


if mode == "print":
    if not subset_only:
        sys.stdout.write(table())
        print()
    sys.stdout.write(table(subset_results, SUBSET_FEATURES))
    sys.exit(0)

lines = per_major_lines()
for line, _ in lines:
    print(line)
print()
if not subset_only:
    sys.stdout.write(table())
    print()
sys.stdout.write(table(subset_results, SUBSET_FEATURES))
bad = [l for l, b in lines if b]

try:
    with open(readme, encoding="utf-8") as f:
        text = f.read()
except FileNotFoundError:
    text = None

if mode == "check":
    if (
        text is None
        or (not subset_only and current_section(text) != section())
        or current_section(text, SUBSET_START, SUBSET_END) != subset_section()
    ):
        print(
            f"\nnote: the Compatibility section of {readme} differs from these results; "
            "scripts/compat-table.sh rewrites it"
        )
    if bad:
        die(f"{len(bad)} of {len(majors)} majors did not pass every feature")
    sys.exit(0)

# mode == "write"


def replace_section(text, start, end, new):
    """text with its section between start and end (markers included) replaced by new."""
    s = text.find(start)
    e = text.find(end) + len(end)
    rest = text[e:]
    if rest.startswith("\n"):
        rest = rest[1:]
    return text[:s] + new + rest


# The heading belongs to the README around the markers; it is written only with a new section.
if subset_only:
    if text is None or current_section(text) is None:
        die(f"--subset-only: {readme} has no compatibility section yet: run the whole matrix first")
    updated = text
elif text is None:
    updated = "## Compatibility\n\n" + section()
elif current_section(text) is None:
    if START in text or END in text:
        die(f"{readme} has only one of the markers {START} / {END}: fix it by hand")
    updated = text.rstrip("\n") + "\n\n## Compatibility\n\n" + section()
else:
    updated = replace_section(text, START, END, section())
if current_section(updated, SUBSET_START, SUBSET_END) is None:
    if SUBSET_START in updated or SUBSET_END in updated:
        die(f"{readme} has only one of the markers {SUBSET_START} / {SUBSET_END}: fix it by hand")
    # A new subset section goes right after the first one.
    updated = replace_section(updated, START, END, current_section(updated) + "\n" + subset_section())
else:
    updated = replace_section(updated, SUBSET_START, SUBSET_END, subset_section())
if updated != text:
    tmp = readme + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(updated)
    os.replace(tmp, readme)
    print(f"\nwrote the Compatibility section of {readme}")
else:
    print(f"\n{readme} is up to date")
PYTHON

//! Oracles: PostgreSQL's own tools judging what walrelay produced.
//!
//! * [`pg_waldump`]: every record between two LSNs must decode, with no gap.
//! * [`pg_verifybackup`]: a bootstrapped directory must match its backup manifest (PG 13+).
//! * [`pg_controldata`]: the control file's fields, e.g. the system identifier.
//! * [`pg_dumpall`] / [`assert_same_dumpall`]: two clusters hold the same data.
//!
//! They are Debian's PostgreSQL 15 programs (see [`crate::install`] for the version limits that
//! implies). Parsers here take the tools' text output, which is not a stable interface, so they are
//! strict about what they understand and report anything else as [`TestkitError::Parse`] instead of
//! guessing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use walrelay_protocol::Lsn;

use crate::error::{Result, TestkitError};
use crate::install::ClientTools;
use crate::process::{pg_command, run_ok};

/// One WAL record as pg_waldump prints it:
/// `rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/01000028, prev 0/00000000, desc: INSERT off 2 …`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// Resource manager name (`XLOG`, `Heap`, `Transaction`, …).
    pub rmgr: String,
    /// Length of the record without backup blocks.
    pub rec_len: u32,
    /// Total length of the record (`xl_tot_len`).
    pub tot_len: u32,
    /// Transaction id (0 for none).
    pub xid: u32,
    /// Start of the record.
    pub lsn: Lsn,
    /// Start of the previous record (`xl_prev`).
    pub prev: Lsn,
    /// Everything after `desc: `.
    pub desc: String,
}

/// What [`pg_waldump`] decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalDump {
    pub records: Vec<WalRecord>,
}

impl WalDump {
    /// Records of one resource manager.
    pub fn by_rmgr<'a>(&'a self, rmgr: &'a str) -> impl Iterator<Item = &'a WalRecord> + 'a {
        self.records.iter().filter(move |r| r.rmgr == rmgr)
    }

    /// Checks that the records form one chain: each record's `prev` is the previous record's `lsn`.
    /// pg_waldump itself stops at a broken link, so this guards the parser rather than the WAL.
    pub fn check_chain(&self) -> std::result::Result<(), String> {
        for pair in self.records.windows(2) {
            if pair[1].prev != pair[0].lsn {
                return Err(format!(
                    "record at {} has prev {}, but the record before it is at {}",
                    pair[1].lsn, pair[1].prev, pair[0].lsn
                ));
            }
        }
        Ok(())
    }
}

/// Decodes every WAL record from `start` up to `end` in `dir` (a directory of segment files, or a data
/// directory: pg_waldump looks in `dir/pg_wal` too), on the timeline of `start`'s segment files.
///
/// Fails with pg_waldump's stderr if any record in the range is missing or corrupt.
pub fn pg_waldump(dir: &Path, start: Lsn, end: Lsn) -> Result<WalDump> {
    pg_waldump_args(dir, start, end, None)
}

/// [`pg_waldump`] on timeline `timeline` (`-t`).
pub fn pg_waldump_on_timeline(dir: &Path, timeline: u32, start: Lsn, end: Lsn) -> Result<WalDump> {
    pg_waldump_args(dir, start, end, Some(timeline))
}

fn pg_waldump_args(dir: &Path, start: Lsn, end: Lsn, timeline: Option<u32>) -> Result<WalDump> {
    let tools = ClientTools::debian()?;
    let mut cmd = pg_command(&tools.pg_waldump());
    cmd.arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(start.to_string())
        .arg("-e")
        .arg(end.to_string());
    if let Some(tli) = timeline {
        cmd.arg("-t").arg(tli.to_string());
    }
    let out = run_ok(cmd, None, crate::env::timeout())?;
    parse_waldump(&out)
}

/// Parses pg_waldump's default output: one `rmgr: …` line per record. Any other non-empty line is an
/// error (with `-b`/`--stats` the format differs; we never pass them).
pub fn parse_waldump(out: &str) -> Result<WalDump> {
    let mut records = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        records.push(parse_waldump_line(line).ok_or_else(|| TestkitError::Parse {
            tool: "pg_waldump",
            detail: format!("cannot parse line {line:?}"),
        })?);
    }
    Ok(WalDump { records })
}

/// One record line; `None` if it does not have the expected shape.
fn parse_waldump_line(line: &str) -> Option<WalRecord> {
    let rest = line.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(" len (rec/tot): ")?;
    let (lens, rest) = rest.split_once(", tx: ")?;
    let (rec_len, tot_len) = lens.split_once('/')?;
    let (xid, rest) = rest.split_once(", lsn: ")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (prev, rest) = rest.split_once(", ")?;
    let desc = rest.strip_prefix("desc: ")?;
    let rmgr = rmgr.trim();
    if rmgr.is_empty() || rmgr.contains(char::is_whitespace) {
        return None;
    }
    Some(WalRecord {
        rmgr: rmgr.to_string(),
        rec_len: rec_len.trim().parse().ok()?,
        tot_len: tot_len.trim().parse().ok()?,
        xid: xid.trim().parse().ok()?,
        lsn: lsn.trim().parse().ok()?,
        prev: prev.trim().parse().ok()?,
        desc: desc.trim_end().to_string(),
    })
}

/// Options of [`pg_verifybackup`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyBackupOptions {
    /// `-n`: skip checking the WAL the backup needs (for a backup made without WAL).
    pub no_parse_wal: bool,
    /// `-w`: where the WAL is, when not in the backup's `pg_wal`.
    pub wal_dir: Option<PathBuf>,
    /// `-m`: the manifest, when not `backup_manifest` inside the backup.
    pub manifest: Option<PathBuf>,
    /// `-i`: paths (relative to the backup) to ignore.
    pub ignore: Vec<String>,
    /// `-s`: check only sizes, not checksums.
    pub skip_checksums: bool,
}

/// Runs `pg_verifybackup` on `dir`; on success returns its stdout ("backup successfully verified").
pub fn pg_verifybackup(dir: &Path, opts: &VerifyBackupOptions) -> Result<String> {
    let tools = ClientTools::debian()?;
    let mut cmd = pg_command(&tools.pg_verifybackup());
    if opts.no_parse_wal {
        cmd.arg("-n");
    }
    if let Some(w) = &opts.wal_dir {
        cmd.arg("-w").arg(w);
    }
    if let Some(m) = &opts.manifest {
        cmd.arg("-m").arg(m);
    }
    for i in &opts.ignore {
        cmd.arg("-i").arg(i);
    }
    if opts.skip_checksums {
        cmd.arg("-s");
    }
    cmd.arg(dir);
    run_ok(cmd, None, crate::env::timeout())
}

/// `pg_controldata`'s fields, by the names it prints (`Database system identifier`,
/// `Latest checkpoint location`, `Database cluster state`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlData {
    pub fields: BTreeMap<String, String>,
}

impl ControlData {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    pub fn system_identifier(&self) -> Option<u64> {
        self.get("Database system identifier")?.parse().ok()
    }

    /// `Database cluster state`, e.g. `shut down`, `in production`, `in archive recovery`.
    pub fn state(&self) -> Option<&str> {
        self.get("Database cluster state")
    }

    pub fn latest_checkpoint_timeline(&self) -> Option<u32> {
        self.get("Latest checkpoint's TimeLineID")?.parse().ok()
    }

    pub fn wal_segment_size(&self) -> Option<u64> {
        self.get("Bytes per WAL segment")?.parse().ok()
    }
}

/// Runs `pg_controldata` on a data directory.
pub fn pg_controldata(data_dir: &Path) -> Result<ControlData> {
    let tools = ClientTools::debian()?;
    let mut cmd = pg_command(&tools.pg_controldata());
    cmd.arg(data_dir);
    parse_controldata(&run_ok(cmd, None, crate::env::timeout())?)
}

/// Parses `Name:   value` lines. The name ends at the first colon (values such as times contain colons,
/// names do not).
pub fn parse_controldata(out: &str) -> Result<ControlData> {
    let mut fields = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| TestkitError::Parse {
            tool: "pg_controldata",
            detail: format!("line without ':' {line:?}"),
        })?;
        if name.trim().is_empty() {
            return Err(TestkitError::Parse {
                tool: "pg_controldata",
                detail: format!("line without a field name {line:?}"),
            });
        }
        fields.insert(name.trim().to_string(), value.trim().to_string());
    }
    if fields.is_empty() {
        return Err(TestkitError::Parse {
            tool: "pg_controldata",
            detail: "no output".to_string(),
        });
    }
    Ok(ControlData { fields })
}

/// `pg_dumpall` of a running cluster (all databases, roles and tablespaces).
pub fn pg_dumpall(cluster: &crate::Cluster) -> Result<String> {
    cluster.try_dumpall()
}

/// Panics unless two clusters dump identically, showing the first differing lines. Stop load first:
/// a standby compared while the primary still writes differs for good reason.
pub fn assert_same_dumpall(a: &crate::Cluster, b: &crate::Cluster) {
    let da = normalize_dump(&a.dumpall());
    let db = normalize_dump(&b.dumpall());
    if let Some(diff) = first_difference(&da, &db) {
        panic!("pg_dumpall of {} and {} differ: {diff}", a.name(), b.name());
    }
}

/// Removes what differs between two dumps of the same data: the random key of the `\restrict` /
/// `\unrestrict` psql meta-commands that recent pg_dump minor releases emit (a new key per dump).
pub fn normalize_dump(dump: &str) -> String {
    let mut out = String::with_capacity(dump.len());
    for line in dump.lines() {
        if line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A short description of where two texts first differ, or `None` if equal.
pub(crate) fn first_difference(a: &str, b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let i = la
        .iter()
        .zip(lb.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    let line = |v: &[&str], i: usize| {
        v.get(i)
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "<end>".to_string())
    };
    Some(format!(
        "first difference at line {}: {} vs {} ({} vs {} lines)",
        i + 1,
        line(&la, i),
        line(&lb, i),
        la.len(),
        lb.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WALDUMP: &str = "\
rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/01000028, prev 0/00000000, desc: RUNNING_XACTS nextXid 735 latestCompletedXid 734 oldestRunningXid 735
rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/01000060, prev 0/01000028, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16384 blk 0 FPW
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/010000F8, prev 0/01000060, desc: COMMIT 2024-01-01 10:00:00.000001 UTC
";

    #[test]
    fn waldump_lines() {
        let d = parse_waldump(WALDUMP).unwrap();
        assert_eq!(d.records.len(), 3);
        let r = &d.records[1];
        assert_eq!(r.rmgr, "Heap");
        assert_eq!((r.rec_len, r.tot_len, r.xid), (54, 150, 735));
        assert_eq!(r.lsn, Lsn(0x0100_0060));
        assert_eq!(r.prev, Lsn(0x0100_0028));
        assert!(r.desc.starts_with("INSERT off 2"));
        assert!(r.desc.ends_with("FPW"));
        assert_eq!(d.by_rmgr("Transaction").count(), 1);
        assert_eq!(d.check_chain(), Ok(()));
    }

    #[test]
    fn waldump_broken_chain_is_reported() {
        let text = WALDUMP.replace("prev 0/01000060", "prev 0/01000061");
        let d = parse_waldump(&text).unwrap();
        assert!(d.check_chain().unwrap_err().contains("0/10000F8"));
    }

    #[test]
    fn waldump_empty_and_bad_lines() {
        assert_eq!(parse_waldump("").unwrap().records.len(), 0);
        assert_eq!(parse_waldump("\n\n").unwrap().records.len(), 0);
        for bad in [
            "pg_waldump: error: something",
            "rmgr: Heap",
            "rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/01000060, prev 0/01000028",
            "rmgr: Heap        len (rec/tot):     x/   150, tx:        735, lsn: 0/01000060, prev 0/01000028, desc: X",
            "rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/1000060000, prev 0/01000028, desc: X",
            "rmgr:             len (rec/tot):     54/   150, tx:        735, lsn: 0/01000060, prev 0/01000028, desc: X",
        ] {
            let e = parse_waldump(bad).unwrap_err();
            assert!(matches!(e, TestkitError::Parse { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn controldata_fields() {
        let out = "\
pg_control version number:            1300
Database system identifier:           7301234567890123456
Database cluster state:               in production
pg_control last modified:             Sat 27 Nov 2021 04:59:31 PM UTC
Latest checkpoint's TimeLineID:       1
Bytes per WAL segment:                1048576
";
        let c = parse_controldata(out).unwrap();
        assert_eq!(c.system_identifier(), Some(7301234567890123456));
        assert_eq!(c.state(), Some("in production"));
        assert_eq!(
            c.get("pg_control last modified"),
            Some("Sat 27 Nov 2021 04:59:31 PM UTC")
        );
        assert_eq!(c.latest_checkpoint_timeline(), Some(1));
        assert_eq!(c.wal_segment_size(), Some(1048576));
    }

    #[test]
    fn controldata_bad_input() {
        assert!(parse_controldata("").is_err());
        assert!(parse_controldata("no colon here").is_err());
        assert!(parse_controldata(":  value").is_err());
        let c = parse_controldata("Database system identifier: notanumber").unwrap();
        assert_eq!(c.system_identifier(), None);
    }

    #[test]
    fn dump_normalization_drops_restrict_keys() {
        let a = "--\n\\restrict abc\nCREATE TABLE t ();\n\\unrestrict abc\n";
        let b = "--\n\\restrict xyz\nCREATE TABLE t ();\n\\unrestrict xyz\n";
        assert_eq!(normalize_dump(a), normalize_dump(b));
        assert_eq!(normalize_dump(a), "--\nCREATE TABLE t ();\n");
        assert_ne!(
            normalize_dump(a),
            normalize_dump("--\nCREATE TABLE u ();\n")
        );
    }

    #[test]
    fn differences() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let d = first_difference("a\nb\nc\n", "a\nx\nc\n").unwrap();
        assert!(
            d.starts_with("first difference at line 2: \"b\" vs \"x\""),
            "{d}"
        );
        let d = first_difference("a\n", "a\nb\n").unwrap();
        assert!(d.contains("<end> vs \"b\""), "{d}");
        let d = first_difference("a", "a\n").unwrap();
        assert!(d.contains("line 2"), "{d}");
    }

    proptest! {
        #[test]
        fn waldump_parser_never_panics(s in "\\PC*") {
            let _ = parse_waldump(&s);
        }

        #[test]
        fn waldump_parser_never_panics_on_near_misses(
            rec in any::<u32>(), tot in any::<u32>(), xid in any::<u32>(),
            lsn in any::<u64>(), prev in any::<u64>(), cut in 0usize..200
        ) {
            let line = format!(
                "rmgr: Heap        len (rec/tot): {rec:>6}/{tot:>8}, tx: {xid:>10}, lsn: {}, prev {}, desc: X",
                Lsn(lsn), Lsn(prev)
            );
            let full = parse_waldump(&line).unwrap();
            prop_assert_eq!(full.records[0].lsn, Lsn(lsn));
            prop_assert_eq!(full.records[0].xid, xid);
            let cut = line.char_indices().nth(cut).map(|(i, _)| i).unwrap_or(line.len());
            let _ = parse_waldump(&line[..cut]);
        }

        #[test]
        fn controldata_parser_never_panics(s in "\\PC*") {
            let _ = parse_controldata(&s);
        }
    }
}

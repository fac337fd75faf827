use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;
use crate::fs::testing::{FaultFs, FsOp};
use crate::start::{find_streaming_start_in_dir, StartOptions, StartReason};

const MB: u64 = 1024 * 1024;
const ENOSPC: i32 = libc::ENOSPC;
const EIO: i32 = libc::EIO;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MB).unwrap()
}

/// The zero-fill writes that preallocate a new 1 MB test segment at `path`.
fn pad_writes(path: &std::path::Path) -> Vec<FsOp> {
    (0..MB as usize)
        .step_by(PAD_CHUNK)
        .map(|offset| FsOp::Write {
            path: path.to_path_buf(),
            offset: offset as u64,
            len: PAD_CHUNK.min(MB as usize - offset),
        })
        .collect()
}

fn is_pad_write(op: &FsOp) -> bool {
    matches!(op, FsOp::Write { len, .. } if *len == PAD_CHUNK)
}

const PAGE: u64 = 8192;
const SYSID: u64 = 42;

/// Synthetic WAL of timeline 1: every page starts with a header for its own address (a long one at
/// segment starts), followed by filler that depends on the position only. Any two writes of the same
/// range agree, a misplaced byte shows, and start discovery sees valid pages.
fn wal(start: u64, len: usize) -> Vec<u8> {
    let end = start + len as u64;
    let mut out = Vec::with_capacity(len);
    let mut p = start;
    while p < end {
        let page_start = p - p % PAGE;
        let page = wal_page(page_start);
        let to = (end - page_start).min(PAGE) as usize;
        out.extend_from_slice(&page[(p - page_start) as usize..to]);
        p = page_start + to as u64;
    }
    out
}

fn wal_page(addr: u64) -> Vec<u8> {
    use crate::page_header::fixtures::{long_header, short_header};
    let mut page: Vec<u8> = (addr..addr + PAGE).map(|p| (p % 251) as u8 + 1).collect();
    if addr & (MB - 1) == 0 {
        page[..40].copy_from_slice(&long_header(1, addr, SYSID, MB as u32, PAGE as u32));
    } else {
        page[..24].copy_from_slice(&short_header(1, addr));
    }
    page
}

/// The walsender ends XLogData messages at a page boundary or at its flush position, which is past a
/// record, so never inside a page header: move `end` out of one.
fn message_end(end: u64, limit: u64) -> u64 {
    let in_page = end % PAGE;
    let header = if end % MB < PAGE { 40 } else { 24 };
    if in_page > 0 && in_page < header {
        (end - in_page + header).min(limit)
    } else {
        end
    }
}

fn tli(n: u32) -> TimelineId {
    TimelineId(n)
}

fn name(t: u32, segno: u64) -> String {
    SegmentId::new(tli(t), XLogSegNo(segno)).file_name(seg())
}

use walrelay_protocol::XLogSegNo;

fn archive_writer(dir: &TempDir, t: u32, start: u64) -> SegmentWriter {
    SegmentWriter::new(WriterConfig::archive(dir.path(), seg()), tli(t), Lsn(start)).unwrap()
}

fn fault_writer(config: WriterConfig, start: u64) -> (SegmentWriter<FaultFs>, FaultFs) {
    let fs = FaultFs::default();
    let w = SegmentWriter::with_fs(fs.clone(), config, tli(1), Lsn(start)).unwrap();
    (w, fs)
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Writes `total` bytes from `start` in the given chunk sizes (cycled).
fn feed<F: WalFs>(w: &mut SegmentWriter<F>, start: u64, total: usize, chunks: &[usize]) {
    let data = wal(start, total);
    let mut at = 0;
    let mut i = 0;
    while at < total {
        let n = chunks[i % chunks.len()].max(1).min(total - at);
        w.write(Lsn(start + at as u64), &data[at..at + n]).unwrap();
        at += n;
        i += 1;
    }
}

type Completed = Arc<Mutex<Vec<CompletedSegment>>>;

fn recording_hook(w: &mut SegmentWriter<impl WalFs>) -> Completed {
    let seen: Completed = Arc::default();
    let s = seen.clone();
    w.set_completion_hook(move |c: &CompletedSegment| -> Result<(), HookError> {
        s.lock().unwrap().push(c.clone());
        Ok(())
    });
    seen
}

#[test]
fn archive_complete_segment_is_byte_exact_and_renamed() {
    let d = tempfile::tempdir().unwrap();
    let start = 3 * MB;
    let mut w = archive_writer(&d, 1, start);
    let seen = recording_hook(&mut w);
    feed(
        &mut w,
        start,
        MB as usize,
        &[1, 100, 8192, 200_000, 3, 131_072, 70_000],
    );
    assert_eq!(files(d.path()), vec![name(1, 3)]);
    assert_eq!(
        fs::read(d.path().join(name(1, 3))).unwrap(),
        wal(start, MB as usize)
    );
    assert_eq!(w.flush_lsn(), Lsn(4 * MB));
    assert_eq!(w.write_lsn(), Lsn(4 * MB));
    assert_eq!(w.current_segment(), None);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![CompletedSegment {
            segment: SegmentId::new(tli(1), XLogSegNo(3)),
            file_name: name(1, 3),
            path: d.path().join(name(1, 3)),
            end_lsn: Lsn(4 * MB),
        }]
    );
    let mode = fs::metadata(d.path().join(name(1, 3)))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn partial_segment_is_preallocated_and_keeps_its_partial_name() {
    let d = tempfile::tempdir().unwrap();
    let start = MB;
    let mut w = archive_writer(&d, 1, start);
    w.write(Lsn(start), &wal(start, 300_000)).unwrap();
    let partial = d.path().join(format!("{}.partial", name(1, 1)));
    assert_eq!(files(d.path()), vec![format!("{}.partial", name(1, 1))]);
    assert_eq!(
        fs::metadata(&partial).unwrap().len(),
        MB,
        "padded to full size"
    );
    // One chunk above the buffer size goes straight to the kernel, but is not durable yet.
    assert_eq!(w.write_lsn(), Lsn(start + 300_000));
    assert_eq!(w.flush_lsn(), Lsn(start));
    assert_eq!(w.flush().unwrap(), Lsn(start + 300_000));
    let content = fs::read(&partial).unwrap();
    assert_eq!(&content[..300_000], &wal(start, 300_000)[..]);
    assert!(content[300_000..].iter().all(|&b| b == 0));
    assert_eq!(w.close().unwrap(), Lsn(start + 300_000));
    assert_eq!(files(d.path()), vec![format!("{}.partial", name(1, 1))]);
}

#[test]
fn rename_happens_only_at_full_size() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    w.write(Lsn(0), &wal(0, MB as usize - 1)).unwrap();
    w.flush().unwrap();
    assert_eq!(files(d.path()), vec![format!("{}.partial", name(1, 0))]);
    assert_eq!(w.flush_lsn(), Lsn(MB - 1));
    w.write(Lsn(MB - 1), &wal(MB - 1, 1)).unwrap();
    assert_eq!(files(d.path()), vec![name(1, 0)]);
    assert_eq!(w.flush_lsn(), Lsn(MB));
}

#[test]
fn one_chunk_spanning_segments() {
    let d = tempfile::tempdir().unwrap();
    let start = MB;
    let mut w = archive_writer(&d, 1, start);
    let seen = recording_hook(&mut w);
    let len = 2 * MB as usize + MB as usize / 2;
    w.write(Lsn(start), &wal(start, len)).unwrap();
    assert_eq!(
        files(d.path()),
        vec![name(1, 1), name(1, 2), format!("{}.partial", name(1, 3))]
    );
    assert_eq!(
        fs::read(d.path().join(name(1, 1))).unwrap(),
        wal(MB, MB as usize)
    );
    assert_eq!(
        fs::read(d.path().join(name(1, 2))).unwrap(),
        wal(2 * MB, MB as usize)
    );
    let names: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.file_name.clone())
        .collect();
    assert_eq!(names, vec![name(1, 1), name(1, 2)]);
    assert_eq!(w.flush_lsn(), Lsn(3 * MB), "segment completion flushes");
    assert_eq!(w.next_lsn(), Lsn(start + len as u64));
}

#[test]
fn small_chunks_are_coalesced_into_large_writes() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, fs) = fault_writer(WriterConfig::archive(d.path(), seg()), 0);
    feed(&mut w, 0, 100_000, &[100]);
    let data_writes = |fs: &FaultFs| {
        fs.ops()
            .into_iter()
            .filter(|op| matches!(op, FsOp::Write { .. }) && !is_pad_write(op))
            .count()
    };
    assert_eq!(
        data_writes(&fs),
        0,
        "100 kB stay below the 128 kB write buffer"
    );
    assert_eq!(w.write_lsn(), Lsn(0));
    assert_eq!(w.next_lsn(), Lsn(100_000));
    w.flush().unwrap();
    assert_eq!(data_writes(&fs), 1);
    feed(&mut w, 100_000, 300_000, &[1000]);
    // 300 kB in 1 kB chunks: one write each time 128 kB (132 chunks) accumulate, the rest stays buffered.
    assert_eq!(data_writes(&fs), 3);
    assert_eq!(w.write_lsn(), Lsn(100_000 + 2 * 132_000));
}

#[test]
fn not_contiguous_is_refused_without_poisoning() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    w.write(Lsn(0), &wal(0, 10)).unwrap();
    let e = w.write(Lsn(11), &wal(11, 10)).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::NotContiguous {
                expected: Lsn(10),
                got: Lsn(11)
            }
        ),
        "{e}"
    );
    let e = w.write(Lsn(0), &wal(0, 10)).unwrap_err();
    assert!(matches!(e, WriterError::NotContiguous { .. }), "{e}");
    w.write(Lsn(10), &wal(10, 10)).unwrap();
    w.write(Lsn(20), &[]).unwrap();
    assert_eq!(w.flush().unwrap(), Lsn(20));
}

#[test]
fn bad_construction_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = || WriterConfig::archive(d.path(), seg());
    let e = SegmentWriter::new(cfg(), tli(1), Lsn(MB + 8192)).unwrap_err();
    assert!(
        matches!(e, WriterError::UnalignedStart { offset: 8192, .. }),
        "{e}"
    );
    let e = SegmentWriter::new(cfg(), tli(0), Lsn(0)).unwrap_err();
    assert!(matches!(e, WriterError::InvalidTimeline), "{e}");
    let missing = WriterConfig::archive(d.path().join("nope"), seg());
    let e = SegmentWriter::new(missing, tli(1), Lsn(0)).unwrap_err();
    assert!(matches!(e, WriterError::MissingDirectory(_)), "{e}");
    assert!(e.to_string().contains("create it first"), "{e}");
}

#[test]
fn lsn_overflow_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let start = (u64::MAX >> 20) << 20;
    let mut w = archive_writer(&d, 1, start);
    let e = w
        .write(Lsn(start), &vec![1u8; 2 * MB as usize])
        .unwrap_err();
    assert!(matches!(e, WriterError::LsnOverflow { .. }), "{e}");
    assert!(w.poisoned().is_none());
}

#[test]
fn existing_full_size_partial_is_overwritten_in_place() {
    let d = tempfile::tempdir().unwrap();
    let partial = d.path().join(format!("{}.partial", name(1, 2)));
    fs::write(&partial, vec![0xFFu8; MB as usize]).unwrap();
    let ino = fs::metadata(&partial).unwrap().ino();
    let mut w = archive_writer(&d, 1, 2 * MB);
    feed(&mut w, 2 * MB, MB as usize, &[65_536]);
    let done = d.path().join(name(1, 2));
    assert_eq!(fs::read(&done).unwrap(), wal(2 * MB, MB as usize));
    assert_eq!(
        fs::metadata(&done).unwrap().ino(),
        ino,
        "renamed, not recreated"
    );
}

#[test]
fn short_existing_partial_is_padded_and_oversized_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let partial = d.path().join(format!("{}.partial", name(1, 2)));
    fs::write(&partial, vec![0u8; 5000]).unwrap();
    let mut w = archive_writer(&d, 1, 2 * MB);
    w.write(Lsn(2 * MB), &wal(2 * MB, 10)).unwrap();
    w.flush().unwrap();
    assert_eq!(fs::metadata(&partial).unwrap().len(), MB);
    drop(w);

    fs::write(&partial, vec![0u8; MB as usize + 1]).unwrap();
    let mut w = archive_writer(&d, 1, 2 * MB);
    let e = w.write(Lsn(2 * MB), &wal(2 * MB, 10)).unwrap_err();
    assert!(
        matches!(e, WriterError::OversizedSegmentFile { size, .. } if size == MB + 1),
        "{e}"
    );
    assert!(e.to_string().contains(".partial"), "{e}");
    assert!(matches!(w.flush(), Err(WriterError::Poisoned(_))));
}

#[test]
fn an_already_complete_segment_is_never_overwritten() {
    for suffix in ["", ".gz", ".lz4", ".zst"] {
        let d = tempfile::tempdir().unwrap();
        let done = d.path().join(format!("{}{suffix}", name(1, 2)));
        fs::write(&done, b"keep me").unwrap();
        let mut w = archive_writer(&d, 1, 2 * MB);
        let e = w.write(Lsn(2 * MB), &wal(2 * MB, 10)).unwrap_err();
        assert!(
            matches!(e, WriterError::SegmentAlreadyComplete { .. }),
            "{e}"
        );
        assert_eq!(fs::read(&done).unwrap(), b"keep me");
        assert_eq!(files(d.path()), vec![format!("{}{suffix}", name(1, 2))]);
    }
}

#[test]
fn close_flushes_and_keeps_partial() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, MB);
    w.write(Lsn(MB), &wal(MB, 1000)).unwrap();
    assert_eq!(w.flush_lsn(), Lsn(MB));
    assert!(w.has_unflushed());
    assert_eq!(w.close().unwrap(), Lsn(MB + 1000));
    let content = fs::read(d.path().join(format!("{}.partial", name(1, 1)))).unwrap();
    assert_eq!(&content[..1000], &wal(MB, 1000)[..]);
}

// ---------------------------------------------------------------------------------------------
// pg_wal layout

/// A `pg_wal` as initdb makes it: 0700 (files there follow its group bits).
fn pg_wal_dir() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

#[test]
fn pg_wal_files_follow_a_group_access_directory() {
    let d = pg_wal_dir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o750)).unwrap();
    let cfg = WriterConfig::pg_wal(d.path(), seg());
    assert_eq!((cfg.file_mode, cfg.dir_mode), (0o640, 0o750));
    let mut w = SegmentWriter::new(cfg, tli(1), Lsn(0)).unwrap();
    w.write(Lsn(0), &wal(0, MB as usize)).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.path().join("archive_status")), 0o750);
    assert_eq!(mode(&d.path().join(name(1, 0))), 0o640);
    assert_eq!(
        mode(
            &d.path()
                .join("archive_status")
                .join(format!("{}.done", name(1, 0)))
        ),
        0o640
    );
}

#[test]
fn pg_wal_segment_has_real_name_full_size_and_done_marker_on_completion() {
    let d = pg_wal_dir();
    let cfg = WriterConfig::pg_wal(d.path(), seg());
    assert_eq!(cfg.file_mode, 0o600);
    let mut w = SegmentWriter::new(cfg, tli(1), Lsn(5 * MB)).unwrap();
    assert!(
        d.path().join("archive_status").is_dir(),
        "created if missing"
    );
    w.write(Lsn(5 * MB), &wal(5 * MB, 1000)).unwrap();
    let path = d.path().join(name(1, 5));
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        meta.len(),
        MB,
        "a pg_wal segment is never shorter than a segment"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        files(d.path()),
        vec![name(1, 5), "archive_status".to_string()]
    );
    assert!(files(&d.path().join("archive_status")).is_empty());
    feed(&mut w, 5 * MB + 1000, MB as usize - 1000, &[8192]);
    assert_eq!(fs::read(&path).unwrap(), wal(5 * MB, MB as usize));
    assert_eq!(
        files(&d.path().join("archive_status")),
        vec![format!("{}.done", name(1, 5))]
    );
}

#[test]
fn pg_wal_status_markers_mimic_walreceiver() {
    // archive_mode = always: .ready instead of .done.
    let d = pg_wal_dir();
    let mut cfg = WriterConfig::pg_wal(d.path(), seg());
    cfg.destination = Destination::PgWal {
        pg_wal: d.path().to_path_buf(),
        status: ArchiveStatusMarker::Ready,
    };
    let mut w = SegmentWriter::new(cfg, tli(1), Lsn(0)).unwrap();
    w.write(Lsn(0), &wal(0, MB as usize)).unwrap();
    assert_eq!(
        files(&d.path().join("archive_status")),
        vec![format!("{}.ready", name(1, 0))]
    );
    drop(w);

    // XLogArchiveForceDone turns an existing .ready into .done.
    let mut w = SegmentWriter::new(WriterConfig::pg_wal(d.path(), seg()), tli(1), Lsn(MB)).unwrap();
    fs::write(
        d.path()
            .join("archive_status")
            .join(format!("{}.ready", name(1, 1))),
        b"",
    )
    .unwrap();
    w.write(Lsn(MB), &wal(MB, MB as usize)).unwrap();
    assert_eq!(
        files(&d.path().join("archive_status")),
        vec![
            format!("{}.ready", name(1, 0)),
            format!("{}.done", name(1, 1))
        ]
    );
}

#[test]
fn pg_wal_recycled_file_is_overwritten_in_place_not_replaced() {
    let d = pg_wal_dir();
    let path = d.path().join(name(1, 7));
    // What a standby's checkpointer leaves: an old segment (here 3) renamed to a future name.
    let stale = crate::page_header::fixtures::segment(1, 3, 42, MB as u32, 8192, 128);
    fs::write(&path, &stale).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    let mut w =
        SegmentWriter::new(WriterConfig::pg_wal(d.path(), seg()), tli(1), Lsn(7 * MB)).unwrap();
    w.write(Lsn(7 * MB), &wal(7 * MB, 200_000)).unwrap();
    w.flush().unwrap();
    let content = fs::read(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        ino,
        "opened without replacing"
    );
    assert_eq!(&content[..200_000], &wal(7 * MB, 200_000)[..]);
    assert_eq!(
        &content[200_000..],
        &stale[200_000..],
        "not truncated: the rest is untouched"
    );
    feed(&mut w, 7 * MB + 200_000, MB as usize - 200_000, &[100_000]);
    assert_eq!(fs::read(&path).unwrap(), wal(7 * MB, MB as usize));
}

#[test]
fn pg_wal_files_belong_to_the_data_directory_owner_when_root() {
    if !nix_is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let d = pg_wal_dir();
    // WriterConfig::pg_wal takes the owner from the directory, as the data directory's owner.
    std::os::unix::fs::chown(d.path(), Some(4321), Some(4322)).unwrap();
    let cfg = WriterConfig::pg_wal(d.path(), seg());
    assert_eq!(cfg.owner, walrelay_durable::Owner::ids(4321, 4322));
    let mut w = SegmentWriter::new(cfg, tli(2), Lsn(0)).unwrap();
    w.write_history_file(tli(2), b"1\t0/0\tno recovery target specified\n")
        .unwrap();
    w.write(Lsn(0), &wal(0, MB as usize)).unwrap();
    for p in [
        d.path().join(name(2, 0)),
        d.path().join("00000002.history"),
        d.path()
            .join("archive_status")
            .join(format!("{}.done", name(2, 0))),
        d.path()
            .join("archive_status")
            .join("00000002.history.done"),
    ] {
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
}

fn nix_is_root() -> bool {
    // /proc/self belongs to the effective user.
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Timelines and history files

const HISTORY_2: &[u8] = b"1\t0/180000\tno recovery target specified\n";

#[test]
fn archive_timeline_switch_keeps_old_partial_and_needs_history() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, MB);
    w.write(Lsn(MB), &wal(MB, MB as usize + MB as usize / 2))
        .unwrap();
    // Received up to 0/280000; timeline 1 ended at 0/240000, inside segment 2.
    let switch = Lsn(0x24_0000);
    w.switch_timeline(tli(2), switch).unwrap();
    assert_eq!(w.timeline(), tli(2));
    assert_eq!(w.next_lsn(), Lsn(2 * MB), "restart at the segment start");
    assert_eq!(
        w.flush_lsn(),
        switch,
        "everything up to the switch point is durable"
    );
    assert_eq!(w.write_lsn(), switch);
    assert_eq!(
        files(d.path()),
        vec![name(1, 1), format!("{}.partial", name(1, 2))],
        "the old timeline's last segment stays .partial"
    );
    // No WAL of timeline 2 before its history file.
    let e = w.write(Lsn(2 * MB), &wal(2 * MB, 10)).unwrap_err();
    assert!(matches!(e, WriterError::HistoryMissing { .. }), "{e}");
    assert!(w.poisoned().is_none());
    let history = b"1\t0/240000\tno recovery target specified\n";
    w.write_history_file(tli(2), history).unwrap();
    assert_eq!(
        fs::read(d.path().join("00000002.history")).unwrap(),
        history
    );
    feed(&mut w, 2 * MB, MB as usize, &[100_000]);
    assert_eq!(
        fs::read(d.path().join(name(2, 2))).unwrap(),
        wal(2 * MB, MB as usize)
    );
    assert_eq!(w.flush_lsn(), Lsn(3 * MB));
    assert_eq!(
        files(d.path()),
        vec![
            name(1, 1),
            format!("{}.partial", name(1, 2)),
            "00000002.history".to_string(),
            name(2, 2)
        ]
    );
}

#[test]
fn history_file_present_from_an_earlier_run_is_enough() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("00000003.history"), b"1\t0/0\tx\n2\t0/0\ty\n").unwrap();
    let mut w = archive_writer(&d, 3, 0);
    w.write(Lsn(0), &wal(0, 10)).unwrap();
}

#[test]
fn timeline_switch_validation() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 2, MB);
    let e = w.write(Lsn(MB), &wal(MB, 100)).unwrap_err();
    assert!(matches!(e, WriterError::HistoryMissing { .. }), "{e}");
    assert!(e.to_string().contains("00000002.history"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, MB);
    w.write(Lsn(MB), &wal(MB, 100)).unwrap();
    let e = w.switch_timeline(tli(1), Lsn(MB)).unwrap_err();
    assert!(
        matches!(e, WriterError::TimelineNotIncreasing { .. }),
        "{e}"
    );
    let e = w.switch_timeline(tli(2), Lsn(MB + 101)).unwrap_err();
    assert!(matches!(e, WriterError::SwitchBeyondReceived { .. }), "{e}");
    assert!(w.poisoned().is_none());
    w.switch_timeline(tli(2), Lsn(MB + 100)).unwrap();
}

#[test]
fn history_files_are_validated_and_written_atomically() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    let e = w.write_history_file(tli(1), b"").unwrap_err();
    assert!(matches!(e, WriterError::NoHistoryForTimelineOne), "{e}");
    let e = w.write_history_file(tli(2), b"garbage\n").unwrap_err();
    assert!(matches!(e, WriterError::InvalidHistory { .. }), "{e}");
    let e = w.write_history_file(tli(2), b"2\t0/1\tself\n").unwrap_err();
    assert!(matches!(e, WriterError::InvalidHistory { .. }), "{e}");
    assert!(
        files(d.path()).is_empty(),
        "nothing written for bad content"
    );
    w.write_history_file(tli(2), HISTORY_2).unwrap();
    w.write_history_file(tli(2), HISTORY_2).unwrap(); // idempotent
    assert_eq!(files(d.path()), vec!["00000002.history".to_string()]);
    let meta = fs::metadata(d.path().join("00000002.history")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn pg_wal_timeline_switch_marks_the_last_segment_done() {
    let d = pg_wal_dir();
    let mut w = SegmentWriter::new(WriterConfig::pg_wal(d.path(), seg()), tli(1), Lsn(MB)).unwrap();
    w.write(Lsn(MB), &wal(MB, 5000)).unwrap();
    w.switch_timeline(tli(2), Lsn(MB + 4000)).unwrap();
    w.write_history_file(tli(2), b"1\t0/100FA0\tno recovery target specified\n")
        .unwrap();
    assert_eq!(
        files(&d.path().join("archive_status")),
        vec![
            format!("{}.done", name(1, 1)),
            "00000002.history.done".to_string()
        ]
    );
    w.write(Lsn(MB), &wal(MB, 8192)).unwrap();
    w.flush().unwrap();
    assert!(d.path().join(name(2, 1)).exists());
}

// ---------------------------------------------------------------------------------------------
// Failures

#[test]
fn disk_full_during_write_is_a_hard_error_and_positions_stay() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, fs) = fault_writer(WriterConfig::archive(d.path(), seg()), 0);
    w.write(Lsn(0), &wal(0, 200_000)).unwrap();
    assert_eq!(w.flush().unwrap(), Lsn(200_000));
    // Next data write fails half-way, with 1000 bytes reaching the file.
    fs.fail_writes_from(0, ENOSPC, 1000);
    let e = w.write(Lsn(200_000), &wal(200_000, 200_000)).unwrap_err();
    assert!(matches!(e, WriterError::DiskFull(_)), "{e}");
    assert!(e.is_disk_full());
    assert!(e.to_string().contains("free space"), "{e}");
    assert_eq!(w.write_lsn(), Lsn(200_000));
    assert_eq!(w.flush_lsn(), Lsn(200_000));
    let e = w.write(Lsn(400_000), &wal(400_000, 10)).unwrap_err();
    assert!(matches!(e, WriterError::Poisoned(_)), "{e}");
    assert!(matches!(w.flush(), Err(WriterError::Poisoned(_))));
    assert!(matches!(
        w.switch_timeline(tli(2), Lsn(0)),
        Err(WriterError::Poisoned(_))
    ));
    assert_eq!(w.flush_lsn(), Lsn(200_000));
    assert!(!d.path().join(name(1, 0)).exists());
}

#[test]
fn disk_full_while_preallocating_a_segment() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, fs) = fault_writer(WriterConfig::archive(d.path(), seg()), 0);
    fs.fail_writes_from(0, ENOSPC, 4096);
    let e = w.write(Lsn(0), &wal(0, 10)).unwrap_err();
    assert!(matches!(e, WriterError::DiskFull(_)), "{e}");
    assert_eq!(w.flush_lsn(), Lsn(0));
    assert_eq!(w.next_lsn(), Lsn(0));
}

#[test]
fn disk_full_at_segment_completion_never_renames() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = WriterConfig::archive(d.path(), seg());
    cfg.write_buffer_size = 64 * 1024;
    let (mut w, fs) = fault_writer(cfg, 0);
    feed(&mut w, 0, MB as usize - 1000, &[50_000]);
    fs.fail_writes_from(0, ENOSPC, 0);
    let e = w.write(Lsn(MB - 1000), &wal(MB - 1000, 1000)).unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert_eq!(files(d.path()), vec![format!("{}.partial", name(1, 0))]);
    assert!(w.flush_lsn() < Lsn(MB));
}

#[test]
fn fsync_failure_poisons_and_is_never_retried() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, fs) = fault_writer(WriterConfig::archive(d.path(), seg()), 0);
    w.write(Lsn(0), &wal(0, 300_000)).unwrap();
    fs.fail_syncs_from(0, EIO);
    let e = w.flush().unwrap_err();
    assert!(matches!(e, WriterError::SyncFailed(_)), "{e}");
    assert_eq!(w.flush_lsn(), Lsn(0), "nothing claimed durable");
    let syncs = |fs: &FaultFs| {
        fs.ops()
            .iter()
            .filter(|op| matches!(op, FsOp::SyncData(_)))
            .count()
    };
    assert_eq!(syncs(&fs), 1);
    assert!(matches!(w.flush(), Err(WriterError::Poisoned(_))));
    assert!(matches!(
        w.write(Lsn(300_000), &[1]),
        Err(WriterError::Poisoned(_))
    ));
    assert!(matches!(
        w.write_history_file(tli(2), HISTORY_2),
        Err(WriterError::Poisoned(_))
    ));
    assert_eq!(syncs(&fs), 1, "fsync is not retried after a failure");
    assert!(w.poisoned().unwrap().contains("fsync"));
}

#[test]
fn fsync_failure_at_completion_leaves_the_partial_name() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, fs) = fault_writer(WriterConfig::archive(d.path(), seg()), 0);
    w.write(Lsn(0), &wal(0, MB as usize - 1)).unwrap();
    fs.fail_syncs_from(0, EIO);
    let e = w.write(Lsn(MB - 1), &wal(MB - 1, 1)).unwrap_err();
    assert!(matches!(e, WriterError::SyncFailed(_)), "{e}");
    assert_eq!(files(d.path()), vec![format!("{}.partial", name(1, 0))]);
    assert_eq!(w.flush_lsn(), Lsn(0));
}

#[test]
fn hook_failure_poisons_after_the_segment_is_durable() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    w.set_completion_hook(|_: &CompletedSegment| -> Result<(), HookError> {
        Err("compressor out of memory".into())
    });
    let e = w.write(Lsn(0), &wal(0, MB as usize + 10)).unwrap_err();
    assert!(matches!(e, WriterError::Completion { .. }), "{e}");
    assert!(e.to_string().contains("compressor out of memory"), "{e}");
    assert_eq!(
        fs::read(d.path().join(name(1, 0))).unwrap(),
        wal(0, MB as usize)
    );
    assert_eq!(w.flush_lsn(), Lsn(MB));
    assert!(matches!(w.flush(), Err(WriterError::Poisoned(_))));
}

// ---------------------------------------------------------------------------------------------
// Hooks on a thread of their own (BackgroundCompletion)

/// A hook that records what it saw, the thread it ran on, and whether `finished` was called.
#[derive(Clone, Default)]
struct ThreadRecorder {
    events: Arc<Mutex<Vec<String>>>,
    threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    fail_on: Option<String>,
}

impl SegmentCompletion for ThreadRecorder {
    fn segment_completed(&mut self, segment: &CompletedSegment) -> Result<(), HookError> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        if self.fail_on.as_deref() == Some(segment.file_name.as_str()) {
            return Err("compressor out of memory".into());
        }
        // The segment is complete and durable before the hook hears of it.
        assert_eq!(fs::metadata(&segment.path).unwrap().len(), MB);
        self.events.lock().unwrap().push(segment.file_name.clone());
        Ok(())
    }

    fn history_written(&mut self, timeline: TimelineId, _path: &Path) -> Result<(), HookError> {
        self.events
            .lock()
            .unwrap()
            .push(format!("history {timeline}"));
        Ok(())
    }

    fn finished(&mut self) -> Result<(), HookError> {
        self.events.lock().unwrap().push("finished".to_string());
        Ok(())
    }
}

#[test]
fn background_hook_runs_elsewhere_in_order_and_close_waits_for_it() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    let rec = ThreadRecorder::default();
    w.set_completion_hook(BackgroundCompletion::spawn(rec.clone(), 1).unwrap());
    feed(&mut w, 0, 4 * MB as usize + 5000, &[131_072, 7000]);
    w.switch_timeline(tli(2), Lsn(4 * MB + 4000)).unwrap();
    w.write_history_file(tli(2), b"1\t0/400FA0\tno recovery target specified\n")
        .unwrap();
    w.write(Lsn(4 * MB), &wal(4 * MB, 1000)).unwrap();
    w.close().unwrap();
    // close() returned: everything queued was processed, in the writer's order.
    assert_eq!(
        *rec.events.lock().unwrap(),
        vec![
            name(1, 0),
            name(1, 1),
            name(1, 2),
            name(1, 3),
            format!("history {}", tli(2)),
            "finished".to_string(),
        ]
    );
    let threads = rec.threads.lock().unwrap();
    assert!(threads.iter().all(|t| *t != std::thread::current().id()));
}

#[test]
fn background_hook_failure_poisons_the_writer_at_its_next_call() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    let rec = ThreadRecorder {
        fail_on: Some(name(1, 0)),
        ..Default::default()
    };
    w.set_completion_hook(BackgroundCompletion::spawn(rec.clone(), 1).unwrap());
    // The first segment completes; its hook fails on the other thread, after write() returned.
    w.write(Lsn(0), &wal(0, MB as usize)).unwrap();
    assert_eq!(w.flush_lsn(), Lsn(MB));
    // A later completion collects the failure (the next one, unless the hook thread has not got
    // as far yet: the queue holds one segment), naming the segment it was about.
    let mut failed = None;
    for segno in 1..6u64 {
        if let Err(e) = w.write(Lsn(segno * MB), &wal(segno * MB, MB as usize)) {
            failed = Some((segno, e));
            break;
        }
    }
    let (segno, e) = failed.expect("the hook's failure is reported within two segments");
    assert!(segno <= 2, "reported only at segment {segno}");
    assert!(matches!(e, WriterError::Completion { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("compressor out of memory"), "{text}");
    assert!(text.contains(&name(1, 0)), "{text}");
    // The segment that reported it is complete and durable; the writer accepts nothing more.
    assert_eq!(
        fs::read(d.path().join(name(1, segno))).unwrap(),
        wal(segno * MB, MB as usize)
    );
    assert!(matches!(w.flush(), Err(WriterError::Poisoned(_))));
}

#[test]
fn background_hook_failure_is_reported_by_close() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    let rec = ThreadRecorder {
        fail_on: Some(name(1, 0)),
        ..Default::default()
    };
    w.set_completion_hook(BackgroundCompletion::spawn(rec.clone(), 2).unwrap());
    w.write(Lsn(0), &wal(0, MB as usize + 100)).unwrap();
    let e = w.close().unwrap_err();
    assert!(matches!(e, WriterError::CompletionFinish(_)), "{e}");
    assert!(e.to_string().contains(&name(1, 0)), "{e}");
    assert!(!rec.events.lock().unwrap().contains(&"finished".to_string()));
}

#[test]
fn dropping_a_writer_with_a_background_hook_waits_for_the_queue() {
    let d = tempfile::tempdir().unwrap();
    let mut w = archive_writer(&d, 1, 0);
    let rec = ThreadRecorder::default();
    w.set_completion_hook(BackgroundCompletion::spawn(rec.clone(), 4).unwrap());
    feed(&mut w, 0, 3 * MB as usize, &[MB as usize]);
    drop(w);
    assert_eq!(
        *rec.events.lock().unwrap(),
        vec![name(1, 0), name(1, 1), name(1, 2), "finished".to_string()]
    );
}

// ---------------------------------------------------------------------------------------------
// Order of durable steps, as recorded by the fake file system

fn index_of(ops: &[FsOp], want: &FsOp) -> usize {
    ops.iter()
        .position(|op| op == want)
        .unwrap_or_else(|| panic!("{want:?} not in {ops:#?}"))
}

#[test]
fn archive_order_create_flush_complete() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let (mut w, fs) = fault_writer(WriterConfig::archive(&dir, seg()), 0);
    let partial = dir.join(format!("{}.partial", name(1, 0)));
    let done = dir.join(name(1, 0));
    w.write(Lsn(0), &wal(0, 200_000)).unwrap();
    w.flush().unwrap();
    let ops = fs.ops();
    let pad = pad_writes(&partial);
    assert_eq!(ops[0], FsOp::Create(partial.clone()));
    assert_eq!(ops[1..=pad.len()], pad[..], "preallocated with zeros first");
    let ops = &ops[pad.len()..];
    assert_eq!(
        ops[1],
        FsOp::Write {
            path: partial.clone(),
            offset: 0,
            len: 200_000
        }
    );
    assert_eq!(ops[2], FsOp::SyncData(partial.clone()));
    assert_eq!(
        ops[3],
        FsOp::FsyncDir(dir.clone()),
        "a new file's directory entry is fsynced"
    );
    assert_eq!(ops.len(), 4);

    fs.clear_log();
    w.flush().unwrap();
    assert!(fs.ops().is_empty(), "nothing to flush: no syscalls");

    w.write(Lsn(200_000), &wal(200_000, MB as usize - 200_000))
        .unwrap();
    let ops = fs.ops();
    let sync = index_of(&ops, &FsOp::SyncData(partial.clone()));
    let rename = index_of(
        &ops,
        &FsOp::Rename {
            from: partial.clone(),
            to: done.clone(),
        },
    );
    let dir_sync = ops
        .iter()
        .rposition(|op| *op == FsOp::FsyncDir(dir.clone()))
        .unwrap();
    assert!(sync < rename && rename < dir_sync, "{ops:#?}");
    assert!(ops[..sync]
        .iter()
        .all(|op| matches!(op, FsOp::Write { .. })));
}

#[test]
fn pg_wal_order_install_then_overwrite_then_mark_done() {
    let d = pg_wal_dir();
    let dir = d.path().to_path_buf();
    let (mut w, fs) = fault_writer(WriterConfig::pg_wal(&dir, seg()), 0);
    let seg_path = dir.join(name(1, 0));
    let tmp = durable::temp_path_for(&seg_path);
    w.write(Lsn(0), &wal(0, MB as usize)).unwrap();
    let ops = fs.ops();
    let mut expect_prefix = vec![
        FsOp::CreateDirAll(dir.join("archive_status")),
        FsOp::Create(tmp.clone()),
    ];
    expect_prefix.extend(pad_writes(&tmp));
    expect_prefix.extend([
        FsOp::SyncData(tmp.clone()),
        FsOp::Rename {
            from: tmp.clone(),
            to: seg_path.clone(),
        },
        FsOp::FsyncDir(dir.clone()),
        FsOp::Open(seg_path.clone()),
        FsOp::Write {
            path: seg_path.clone(),
            offset: 0,
            len: MB as usize,
        },
        FsOp::SyncData(seg_path.clone()),
        FsOp::FsyncDir(dir.clone()),
        FsOp::AtomicWrite(
            dir.join("archive_status")
                .join(format!("{}.done", name(1, 0))),
        ),
    ]);
    assert_eq!(ops, expect_prefix);
}

#[test]
fn history_is_durable_before_any_wal_of_its_timeline() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let (mut w, fs) = fault_writer(WriterConfig::archive(&dir, seg()), 0);
    w.write(Lsn(0), &wal(0, 1000)).unwrap();
    w.switch_timeline(tli(2), Lsn(900)).unwrap();
    w.write_history_file(tli(2), b"1\t0/384\tno recovery target specified\n")
        .unwrap();
    w.write(Lsn(0), &wal(0, 1000)).unwrap();
    let ops = fs.ops();
    let history = index_of(&ops, &FsOp::AtomicWrite(dir.join("00000002.history")));
    let create = index_of(
        &ops,
        &FsOp::Create(dir.join(format!("{}.partial", name(2, 0)))),
    );
    assert!(history < create);
    // The old timeline's partial was synced at the switch.
    let old_sync = index_of(
        &ops,
        &FsOp::SyncData(dir.join(format!("{}.partial", name(1, 0)))),
    );
    assert!(old_sync < history);
}

// ---------------------------------------------------------------------------------------------
// Crash states and resume

/// Every file with a final segment name holds exactly a full, correct segment.
fn assert_no_short_final_file(dir: &Path) {
    for f in files(dir) {
        if f.len() == 24 {
            let content = fs::read(dir.join(&f)).unwrap();
            let segno = u64::from_str_radix(&f[16..24], 16).unwrap();
            assert_eq!(
                content.len() as u64,
                MB,
                "{f} has a final name but a short size"
            );
            assert!(
                content == wal(segno * MB, MB as usize),
                "{f} has a final name but wrong content"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Feed a random prefix in random chunks, "crash" (drop without flush), then resume where start
    /// discovery says and finish: every segment ends byte-exact, and no crash state ever shows a final
    /// name on a short or wrong file.
    #[test]
    fn crash_and_resume_yields_exact_segments(
        first_segno in 1u64..4,
        crash_at in 0usize..(3 * MB as usize),
        chunks in proptest::collection::vec(1usize..300_000, 1..8),
        flush_every in 0usize..4,
        buffer in prop_oneof![Just(8192usize), Just(DEFAULT_WRITE_BUFFER_SIZE)],
    ) {
        let d = tempfile::tempdir().unwrap();
        let start = first_segno * MB;
        let total = 3 * MB as usize;
        let data = wal(start, total);
        let mut cfg = WriterConfig::archive(d.path(), seg());
        cfg.write_buffer_size = buffer;
        let mut w = SegmentWriter::new(cfg.clone(), tli(1), Lsn(start)).unwrap();
        let (mut at, mut i) = (0usize, 0usize);
        let crash_at = message_end(start + crash_at as u64, start + total as u64) - start;
        let crash_at = crash_at as usize;
        while at < crash_at {
            let limit = start + crash_at as u64;
            let end = message_end((start + (at + chunks[i % chunks.len()]) as u64).min(limit), limit);
            let n = (end - start) as usize - at;
            w.write(Lsn(start + at as u64), &data[at..at + n]).unwrap();
            at += n;
            i += 1;
            if flush_every > 0 && i % flush_every == 0 {
                w.flush().unwrap();
            }
            assert_no_short_final_file(d.path());
        }
        let flushed = w.flush_lsn();
        drop(w); // crash: no flush, no close

        assert_no_short_final_file(d.path());
        let found = find_streaming_start_in_dir(d.path(), &StartOptions::archive(seg())).unwrap();
        let resume = match &found {
            Some(s) => {
                prop_assert_eq!(s.timeline, tli(1));
                prop_assert!(s.lsn.0 % MB == 0);
                // Never beyond what was received; never re-streams a segment made durable before.
                prop_assert!(s.lsn <= Lsn(start + crash_at as u64), "{s} after a crash at {}", Lsn(start + crash_at as u64));
                prop_assert!(s.lsn >= flushed.segment_start(MB as u32));
                if let StartReason::Partial { valid_until: Some(v), .. } = s.reason {
                    prop_assert!(v >= s.lsn);
                }
                s.lsn.0
            }
            None => start,
        };
        prop_assert!(resume >= start);
        let mut w = SegmentWriter::new(cfg, tli(1), Lsn(resume)).unwrap();
        let from = (resume - start) as usize;
        w.write(Lsn(resume), &data[from..]).unwrap();
        w.close().unwrap();
        prop_assert_eq!(
            files(d.path()),
            (first_segno..first_segno + 3).map(|s| name(1, s)).collect::<Vec<_>>()
        );
        assert_no_short_final_file(d.path());
    }
}

#[test]
fn resuming_fsyncs_the_segment_before_the_start() {
    // A predecessor killed between its last write and its fsync left the bytes in the page cache only;
    // "everything before the start is flushed" must be made true before it is reported.
    let d = tempfile::tempdir().unwrap();
    let prev = d.path().join(name(1, 4));
    fs::write(&prev, wal(4 * MB, MB as usize)).unwrap();
    let fs = FaultFs::default();
    let cfg = WriterConfig::archive(d.path(), seg());
    let w = SegmentWriter::with_fs(fs.clone(), cfg.clone(), tli(1), Lsn(5 * MB)).unwrap();
    assert_eq!(
        fs.ops(),
        vec![
            FsOp::Open(prev.clone()),
            FsOp::SyncData(prev.clone()),
            FsOp::FsyncDir(d.path().to_path_buf())
        ]
    );
    drop(w);
    // Nothing to do at segment 0, or when the previous segment is not there.
    fs.clear_log();
    SegmentWriter::with_fs(fs.clone(), cfg.clone(), tli(1), Lsn(0)).unwrap();
    SegmentWriter::with_fs(fs.clone(), cfg.clone(), tli(1), Lsn(9 * MB)).unwrap();
    assert!(fs.ops().is_empty());
    // A failing fsync refuses to start.
    fs.fail_syncs_from(0, EIO);
    let e = SegmentWriter::with_fs(fs, cfg, tli(1), Lsn(5 * MB)).unwrap_err();
    assert!(matches!(e, WriterError::SyncFailed(_)), "{e}");
}

/// Early writeback hints cover what was written, in order, from the segment start or the last
/// fsync, each at least `writeback_after` long; none for the bytes a completion fsyncs right away,
/// and none at all when switched off.
#[test]
fn writeback_hints_follow_the_written_bytes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let partial = dir.join(format!("{}{PARTIAL_SUFFIX}", name(1, 0)));
    let mut cfg = WriterConfig::archive(&dir, seg());
    cfg.write_buffer_size = 16 * 1024;
    cfg.writeback_after = 64 * 1024;
    let (mut w, fs) = fault_writer(cfg.clone(), 0);
    fs.clear_log();
    // 10 kB chunks: buffered to 20 kB writes; hints at the first write end ≥ 64 kB past the last.
    let mut at = 0u64;
    while at < 300 * 1024 {
        w.write(Lsn(at), &wal(at, 10 * 1024)).unwrap();
        at += 10 * 1024;
    }
    w.flush().unwrap();
    let flushed_at = w.flush_lsn().0;
    while at < MB {
        let n = (10 * 1024).min(MB - at) as usize;
        w.write(Lsn(at), &wal(at, n)).unwrap();
        at += n as u64;
    }
    let ops = fs.ops();
    let mut expect_from = 0u64;
    let mut written_end = 0u64;
    let mut hints = 0;
    let mut synced = false;
    for op in &ops {
        match op {
            // WAL is written in order (after the zero-fill): the latest write's end is the end.
            FsOp::Write { offset, len, .. } => written_end = offset + *len as u64,
            FsOp::SyncData(p) if *p == partial => {
                synced = true;
            }
            FsOp::Writeback { path, offset, len } => {
                assert_eq!(path, &partial);
                if synced {
                    assert_eq!(*offset, flushed_at, "after an fsync hints restart there");
                    synced = false;
                } else {
                    assert_eq!(*offset, expect_from, "{ops:#?}");
                }
                assert!(*len >= 64 * 1024, "{ops:#?}");
                assert_eq!(
                    offset + len,
                    written_end,
                    "a hint ends where the writes end"
                );
                expect_from = offset + len;
                hints += 1;
            }
            _ => {}
        }
    }
    // 1 MB in ≥ 64 kB ranges (20 kB writes: a hint every 80 kB), the last ones before completion
    // left to its fsync.
    assert!((8..=13).contains(&hints), "{hints} hints: {ops:#?}");
    let last_hint_end = ops
        .iter()
        .filter_map(|op| match op {
            FsOp::Writeback { offset, len, .. } => Some(offset + len),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(last_hint_end < MB);
    assert_eq!(fs::read(dir.join(name(1, 0))).unwrap(), wal(0, MB as usize));

    cfg.writeback_after = 0;
    let d2 = tempfile::tempdir().unwrap();
    cfg.destination = Destination::Archive {
        dir: d2.path().to_path_buf(),
    };
    let (mut w, fs) = fault_writer(cfg, 0);
    w.write(Lsn(0), &wal(0, MB as usize / 2)).unwrap();
    assert!(!fs
        .ops()
        .iter()
        .any(|op| matches!(op, FsOp::Writeback { .. })));
}

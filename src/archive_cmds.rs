//! The archive directory's commands: `walrelay restore` (PostgreSQL's `restore_command`),
//! `walrelay verify` (is the archive whole and is its WAL intact?) and `walrelay prune`
//! (pg_archivecleanup semantics). The work is `walrelay-archive`'s; this module turns command
//! lines into its options and its results into reports and exit codes.
//!
//! `restore` is the one to be careful with: PostgreSQL reads its exit status, and a status below
//! 126 other than 0 means "not in the archive" — recovery then ends at that point and the server
//! is promoted. So restore never fails with such a status: a missing file is 1 (quietly), a damaged
//! one `RESTORE_EXIT_CORRUPT` (200), anything else — IO errors, a bad command line that clap lets
//! through, even a panic — `RESTORE_EXIT_ERROR` (201), which makes the startup process stop with
//! FATAL (see `walrelay_archive::RESTORE_EXIT_CORRUPT`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use serde::Serialize;
use walrelay_archive::{
    infer_segment_size, prune, restore, verify, NoContentCheck, PruneOptions, PrunePoint,
    PruneReport, RestoreOptions, RestoreOutcome, SegmentContentCheck, VerifyOptions, VerifyReport,
    WalContentCheck, RESTORE_EXIT_ERROR,
};
use walrelay_protocol::{Lsn, WalFileName, WalSegmentSize};
use walrelay_store::{ArchiveLocation, PrefetchPlan, StoreRestoreOptions, StoreUrl};

/// Upper bound of the default `verify --jobs`: decompression and hashing scale, the disk may not.
const MAX_DEFAULT_VERIFY_JOBS: usize = 4;

/// A `-D` value (directory or URL), parsed after clap: clap's own refusal would repeat the value,
/// and a refused URL may hold a key. [`ArchiveArg::get`] gives the location or a usage error
/// that does not repeat it.
#[derive(Clone, Debug)]
pub struct ArchiveArg(std::result::Result<ArchiveLocation, String>);

impl std::str::FromStr for ArchiveArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(ArchiveArg(
            ArchiveLocation::parse(s).map_err(|e| e.to_string()),
        ))
    }
}

impl ArchiveArg {
    pub fn get(&self) -> Result<&ArchiveLocation> {
        self.0.as_ref().map_err(|e| crate::exit::usage(e.clone()))
    }
}

// ------------------------------------------------------------------------------------- restore

/// `restore_command = 'walrelay restore %f %p -D /archive'`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RestoreArgs {
    /// The file PostgreSQL asks for (%f): a segment, TTTTTTTT.history or NAME.XXXXXXXX.backup.
    // Positionals and -D are checked by `run_restore`, not by clap: clap's usage errors exit with
    // status 2, which PostgreSQL would read as "file not in the archive" and end recovery early.
    #[arg(value_name = "WALFILE")]
    pub wal_file: Option<String>,
    /// Where to write it (%p, e.g. pg_wal/RECOVERYXLOG), atomically.
    #[arg(value_name = "DEST")]
    pub dest: Option<PathBuf>,
    /// Archive: a directory (written by `walrelay receive -D` or pg_receivewal) or object storage
    /// (s3://BUCKET/PREFIX, gs://…, az://…, file:///PATH).
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: Option<String>,
    /// Object storage: fetch the next N segments in the background into --cache, so that
    /// recovery does not wait a round trip per segment.
    #[arg(long = "prefetch", value_name = "N", default_value_t = 0)]
    pub prefetch: u16,
    /// Object storage: where prefetched segments wait (default: pg_wal/.walrelay-prefetch).
    #[arg(long = "cache", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Object storage: the cluster whose WAL to restore (default: the data directory's
    /// global/pg_control, else the only cluster stored).
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: Option<u64>,
    /// When a segment has no complete copy, serve its newest .partial, zero-padded (recovery to the
    /// last received byte after losing the primary).
    #[arg(long = "partial")]
    pub partial: bool,
    /// The cluster's wal_segment_size (16MB, 1MB, or a number of bytes); default: from the file.
    #[arg(long = "wal-segsize", value_name = "SIZE")]
    pub wal_segsize: Option<String>,
    /// fsync the restored file and its directory before exiting. PostgreSQL does not need it: it
    /// fsyncs every restored file it keeps itself (durable_rename), as after `cp`.
    #[arg(long = "fsync")]
    pub fsync: bool,
    /// The restore_command of a standby that also streams from its primary: an archive that
    /// cannot be read now (a store down, a mount gone) is reported as "not in the archive"
    /// (exit 1), so the server streams on instead of stopping; damaged WAL still stops it.
    #[arg(long = "standby")]
    pub standby: bool,
    /// Log what was restored, and files not in the archive (stderr, one line each): the global
    /// `-v` (`--verbose`).
    #[arg(skip)]
    pub verbose: bool,
}

/// Runs `walrelay restore`; always returns `Ok` with the exit status PostgreSQL must see, having
/// printed at most one line (more with `-v`). `main` runs a directory archive's restore through
/// [`run_restore_local`] before any runtime starts; only buckets need this async path.
pub async fn run_restore(args: RestoreArgs) -> Result<i32> {
    match args.directory.as_deref().map(ArchiveLocation::parse) {
        Some(Ok(ArchiveLocation::Store(url))) => Ok(restore_from_store(&args, &url).await),
        _ => Ok(run_restore_local(&args)),
    }
}

/// `walrelay restore` from a directory archive, on the calling thread: plain file work, so no
/// async runtime (its start-up was most of a restore's fixed cost, paid once per file). A panic
/// must not exit 101, which PostgreSQL reads as "not found".
pub fn run_restore_local(args: &RestoreArgs) -> i32 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| restore_blocking(args)))
        // The panic hook printed the one line.
        .unwrap_or(RESTORE_EXIT_ERROR)
}

/// One failure line for PostgreSQL's log; the status that stops recovery.
fn restore_failed(msg: String) -> i32 {
    eprintln!("walrelay: error: {msg}");
    RESTORE_EXIT_ERROR
}

/// `%f`, `%p` and the segment size from the command line, or the failure's exit status.
fn restore_inputs(args: &RestoreArgs) -> Result<(&str, &Path, Option<WalSegmentSize>), i32> {
    let (Some(wal_file), Some(dest)) = (&args.wal_file, &args.dest) else {
        return Err(restore_failed(
            "restore needs the file name and the destination: restore_command = 'walrelay restore %f %p -D ARCHIVE'"
                .into(),
        ));
    };
    let seg_size = args
        .wal_segsize
        .as_deref()
        .map(parse_segment_size)
        .transpose()
        .map_err(restore_failed)?;
    Ok((wal_file, dest, seg_size))
}

/// Whether `restore` reads a directory archive: then it needs no async runtime, and `main` runs
/// [`run_restore_local`] before starting one.
pub fn restore_is_local(args: &RestoreArgs) -> bool {
    !matches!(
        args.directory.as_deref().map(ArchiveLocation::parse),
        Some(Ok(ArchiveLocation::Store(_)))
    )
}

/// `walrelay restore` from a directory archive (or a command line that names none: the error).
fn restore_blocking(args: &RestoreArgs) -> i32 {
    let fail = restore_failed;
    let (wal_file, dest, seg_size) = match restore_inputs(args) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let dir = match args.directory.as_deref().map(ArchiveLocation::parse) {
        None => return fail("restore needs the archive directory: add -D /path/to/archive".into()),
        Some(Err(e)) => return fail(e.to_string()),
        Some(Ok(ArchiveLocation::Dir(d))) => d,
        Some(Ok(ArchiveLocation::Store(_))) => {
            return fail("internal: a store URL reached the directory restore".into())
        }
    };
    let dir = &dir;
    let opts = RestoreOptions {
        seg_size,
        partial: args.partial,
        owner: None,
        fsync: args.fsync,
    };
    match restore(dir, wal_file, dest, &opts) {
        Ok(outcome) => {
            if args.verbose {
                match &outcome {
                    RestoreOutcome::Restored(r) => match r.padded_from {
                        Some(valid) if valid < r.bytes => eprintln!(
                            "walrelay: restored {wal_file} from partial segment {} ({valid} bytes, zero-padded to {})",
                            r.source.display(),
                            r.bytes
                        ),
                        Some(_) => eprintln!(
                            "walrelay: restored {wal_file} from partial segment {} ({} bytes)",
                            r.source.display(),
                            r.bytes
                        ),
                        None => eprintln!(
                            "walrelay: restored {wal_file} from {} ({} bytes)",
                            r.source.display(),
                            r.bytes
                        ),
                    },
                    RestoreOutcome::NotFound => {
                        eprintln!("walrelay: {wal_file} is not in {}", dir.display())
                    }
                }
            }
            outcome.exit_code()
        }
        Err(e) => unreadable(args, wal_file, &e.to_string(), e.restore_exit_code()),
    }
}

/// The exit status for an archive that failed to give `wal_file` (`code`: damaged or other):
/// for a standby's restore_command (`--standby`), anything but damage is "not in the archive",
/// so that the server goes on streaming from its primary.
fn unreadable(args: &RestoreArgs, wal_file: &str, error: &str, code: i32) -> i32 {
    // One line in the server's log: a store's error may carry the response body's line breaks.
    let error = error.split_whitespace().collect::<Vec<_>>().join(" ");
    if args.standby && code == RESTORE_EXIT_ERROR {
        eprintln!(
            "walrelay: warning: restore {wal_file}: {error} (a standby: reported as not in the archive, so that the server streams from its primary meanwhile)"
        );
        return RestoreOutcome::NotFound.exit_code();
    }
    eprintln!("walrelay: error: restore {wal_file}: {error}");
    code
}

/// `walrelay restore` from object storage: the same exit codes as from a directory (an
/// unreachable store is 201, so recovery stops instead of ending early).
async fn restore_from_store(args: &RestoreArgs, url: &StoreUrl) -> i32 {
    let (wal_file, dest, seg_size) = match restore_inputs(args) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let store = match walrelay_store::open_store(url) {
        Ok(s) => s,
        Err(e) => return restore_failed(e.to_string()),
    };
    let restore = RestoreOptions {
        seg_size,
        partial: args.partial,
        owner: None,
        fsync: args.fsync,
    };
    let opts = StoreRestoreOptions::new(restore, args.system_identifier)
        .with_prefetch(usize::from(args.prefetch), args.cache.clone());
    match walrelay_store::restore_from_store(store.as_ref(), wal_file, dest, &opts).await {
        Ok((outcome, plan)) => {
            if args.verbose {
                match &outcome {
                    RestoreOutcome::Restored(r) => eprintln!(
                        "walrelay: restored {wal_file} from {} ({} bytes)",
                        r.source.display(),
                        r.bytes
                    ),
                    RestoreOutcome::NotFound => eprintln!("walrelay: {wal_file} is not in {url}"),
                }
            }
            if let Some(plan) = plan {
                spawn_prefetcher(url, &plan, seg_size);
            }
            outcome.exit_code()
        }
        Err(e) => {
            let code = if e.is_corruption() {
                walrelay_archive::RESTORE_EXIT_CORRUPT
            } else {
                RESTORE_EXIT_ERROR
            };
            unreadable(args, wal_file, &e.to_string(), code)
        }
    }
}

/// Starts `walrelay restore-prefetch` detached (its own process group, no terminal, no output):
/// restore returns at once, the fetcher fills the cache for the next calls. Credentials stay in
/// the environment it inherits, never on its command line.
fn spawn_prefetcher(url: &StoreUrl, plan: &PrefetchPlan, seg_size: Option<WalSegmentSize>) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("restore-prefetch")
        .arg("-D")
        .arg(url.to_string())
        .arg("--cache")
        .arg(&plan.cache)
        .arg("--system-identifier")
        .arg(plan.system_identifier.to_string());
    if let Some(s) = seg_size {
        cmd.arg("--wal-segsize").arg(s.as_u64().to_string());
    }
    cmd.args(&plan.names)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::debug!(error = %e, "could not start the prefetcher");
    }
}

/// `walrelay restore-prefetch` (started by restore, not by hand).
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct PrefetchArgs {
    #[arg(short = 'D', long = "directory", value_name = "URL")]
    pub directory: ArchiveLocation,
    #[arg(long = "cache", value_name = "DIR")]
    pub cache: PathBuf,
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: u64,
    #[arg(long = "wal-segsize", value_name = "SIZE", value_parser = parse_segment_size)]
    pub wal_segsize: Option<WalSegmentSize>,
    /// Segment names to fetch.
    pub names: Vec<String>,
}

/// Runs the background fetcher; always exits 0 (restore fetches what the fetcher did not).
pub async fn run_prefetch(args: PrefetchArgs) -> Result<i32> {
    let ArchiveLocation::Store(url) = &args.directory else {
        return Ok(0);
    };
    let store = walrelay_store::open_store(url)?;
    let names = args
        .names
        .into_iter()
        .filter(|n| walrelay_archive::requested_is_segment(n).unwrap_or(false))
        .collect();
    let plan = PrefetchPlan {
        system_identifier: args.system_identifier,
        cache: args.cache,
        names,
    };
    walrelay_store::prefetch_worker(store.as_ref(), &plan, args.wal_segsize).await;
    Ok(0)
}

// -------------------------------------------------------------------------------------- verify

/// `walrelay verify -D DIR|URL`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct VerifyArgs {
    /// Archive: a directory or object storage (s3://BUCKET/PREFIX, gs://…, az://…, file:///PATH).
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: ArchiveArg,
    /// Object storage: the cluster to verify (default: the only one stored).
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The cluster's wal_segment_size (16MB, 1MB, or bytes); default: from the segments' headers.
    #[arg(long = "wal-segsize", value_name = "SIZE", value_parser = parse_segment_size)]
    pub wal_segsize: Option<WalSegmentSize>,
    /// Do not read the files: check names, sizes, contiguity and timelines only (fast).
    #[arg(long = "no-content")]
    pub no_content: bool,
    /// Report complete segments that have no SHA-256 in walrelay.sha256.
    #[arg(long = "require-checksums")]
    pub require_checksums: bool,
    /// Files read in parallel (default: the number of CPUs, at most 4).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
}

/// `--json` output: the crate's report plus how it was made.
#[derive(Debug, Serialize)]
struct VerifyOutput<'a> {
    ok: bool,
    /// `wal` (page headers and record CRCs checked), or `none` with `--no-content`.
    content_check: &'static str,
    /// Where the segment size came from: `option`, `wal` (page headers) or `default`.
    wal_segment_size_from: &'static str,
    /// Segment boundaries whose spanning record could not be checked (memory caps).
    boundaries_not_checked: u64,
    #[serde(flatten)]
    report: &'a VerifyReport,
}

/// Runs `walrelay verify`: 0 when the archive has no problems, 1 when it has (or holds no WAL at
/// all), 5 when it could not be read.
pub async fn run_verify(args: VerifyArgs) -> Result<i32> {
    if let ArchiveLocation::Store(url) = args.directory.get()? {
        return verify_store_cmd(&args, url)
            .await
            .map_err(|e| crate::exit::archive_unreachable(e, "so nothing was verified"));
    }
    tokio::task::spawn_blocking(move || verify_blocking(&args))
        .await
        .context("verify failed unexpectedly")?
}

fn verify_options(args: &VerifyArgs) -> VerifyOptions {
    let jobs = match args.jobs {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DEFAULT_VERIFY_JOBS),
    };
    VerifyOptions {
        read_content: !args.no_content,
        require_checksums: args.require_checksums,
        jobs,
    }
}

/// The store a URL names and the layout of the cluster to work on (`wanted`, else the only one).
async fn open_cluster_store(
    url: &StoreUrl,
    wanted: Option<u64>,
) -> Result<(
    Arc<dyn walrelay_store::ArchiveStore>,
    walrelay_store::WalLayout,
)> {
    let store = walrelay_store::open_store(url)?;
    match walrelay_store::choose_system(store.as_ref(), wanted).await? {
        Some(sysid) => Ok((store, walrelay_store::WalLayout::new(sysid))),
        None => Err(crate::exit::local(format!(
            "{url} holds no WAL of any cluster (no SYSID/wal/ objects): check the URL and the prefix"
        ))),
    }
}

/// `verify` of one cluster's WAL in object storage: the same checks and report.
async fn verify_store_cmd(args: &VerifyArgs, url: &StoreUrl) -> Result<i32> {
    let (store, layout) = open_cluster_store(url, args.system_identifier).await?;
    let (seg_size, from) = match args.wal_segsize {
        Some(s) => (s, "option"),
        None => match walrelay_store::infer_store_segment_size(store.as_ref(), layout).await? {
            Some(s) => (s, "wal"),
            None => (WalSegmentSize::default(), "default"),
        },
    };
    let wal_check = Arc::new(WalContentCheck::new(seg_size));
    let checks: Arc<dyn SegmentContentCheck> = if args.no_content {
        Arc::new(NoContentCheck)
    } else {
        wal_check.clone()
    };
    let report =
        walrelay_store::verify_store(store, layout, seg_size, checks, verify_options(args))
            .await
            .with_context(|| format!("verify {url}"))?;
    print_verify_report(args, report, from, wal_check.boundaries_skipped())
}

fn verify_blocking(args: &VerifyArgs) -> Result<i32> {
    let ArchiveLocation::Dir(dir) = args.directory.get()? else {
        return Err(anyhow::anyhow!(
            "internal: a store URL reached the directory verify"
        ));
    };
    let (seg_size, from) = match args.wal_segsize {
        Some(s) => (s, "option"),
        None => match infer_segment_size(dir)? {
            Some(s) => (s, "wal"),
            None => (WalSegmentSize::default(), "default"),
        },
    };
    let opts = verify_options(args);
    let wal_check = WalContentCheck::new(seg_size);
    let checks: &dyn SegmentContentCheck = if args.no_content {
        &NoContentCheck
    } else {
        &wal_check
    };
    let report = verify(dir, seg_size, checks, &opts)
        .with_context(|| format!("verify {}", dir.display()))?;
    print_verify_report(args, report, from, wal_check.boundaries_skipped())
}

/// Prints the report as the options ask; the exit status: 0 no problems, 1 problems.
fn print_verify_report(
    args: &VerifyArgs,
    mut report: VerifyReport,
    from: &'static str,
    skipped: u64,
) -> Result<i32> {
    if skipped > 0 {
        report.notes.push(format!(
            "{skipped} segment boundaries were not followed (records too large to hold in memory); each segment was still checked on its own"
        ));
    }
    // Nothing at all — no segment, no .partial, no history file — is not a healthy archive but
    // the wrong -D, or a file system that is not mounted there: a check that always passes then
    // would hide exactly that.
    let empty = report
        .timelines
        .iter()
        .all(|t| t.segments == 0 && t.history_file.is_none());
    if empty {
        report.notes.push(format!(
            "no WAL in {}: nothing to verify — is -D the archive (and its file system mounted)?",
            report.directory.display()
        ));
    } else if from == "default" {
        report
            .notes
            .push("no WAL segments: nothing to check but history files".to_string());
    }
    let ok = report.is_ok() && !empty;
    if args.json {
        let out = VerifyOutput {
            ok,
            content_check: if args.no_content { "none" } else { "wal" },
            wal_segment_size_from: from,
            boundaries_not_checked: skipped,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", human_verify_report(&report, !args.no_content, empty));
    }
    Ok(if ok { 0 } else { 1 })
}

fn human_verify_report(r: &VerifyReport, content: bool, empty: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "archive {} (wal_segment_size {})",
        r.directory.display(),
        WalSegmentSize::new(r.wal_segment_size)
            .map_or_else(|_| r.wal_segment_size.to_string(), |w| w.to_string())
    );
    for t in &r.timelines {
        let range = match (&t.first_segment, &t.last_segment) {
            (Some(a), Some(b)) if a == b => a.clone(),
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "no segments".to_string(),
        };
        let _ = write!(
            s,
            "  timeline {}: {range}, {} segments",
            t.timeline, t.segments
        );
        if t.partial_segments > 0 {
            let _ = write!(s, " ({} partial)", t.partial_segments);
        }
        if let (Some(a), Some(b)) = (t.start_lsn, t.end_lsn) {
            let _ = write!(s, ", WAL {a} .. {b}");
        }
        if let Some(sw) = t.switchpoint {
            let _ = write!(s, ", ends at {sw}");
        }
        s.push('\n');
    }
    if content {
        let _ = writeln!(
            s,
            "  read {} files ({} of WAL; page headers and record CRCs checked), {} checksums matched",
            r.files_read,
            human_bytes(r.wal_bytes_read),
            r.checksums_matched
        );
    } else {
        s.push_str("  files not read (--no-content): names, sizes and contiguity only\n");
    }
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    if empty && r.problems.is_empty() {
        s.push_str("FAILED: no WAL found\n");
    } else if r.problems.is_empty() {
        s.push_str("OK: no problems found\n");
    } else {
        let _ = writeln!(s, "FAILED: {} problems", r.problems.len());
        for p in &r.problems {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(s, "  {}: {kind}: {}", p.file, p.detail);
        }
    }
    s
}

// --------------------------------------------------------------------------------------- prune

/// `walrelay prune -D DIR (--before WALFILE | --before-backup FILE | --before-lsn LSN)`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
#[command(group(ArgGroup::new("point").multiple(false).args(["before", "before_backup", "before_lsn"])))]
pub struct PruneArgs {
    /// Archive: a directory or object storage (s3://BUCKET/PREFIX, gs://…, az://…, file:///PATH).
    #[arg(short = 'D', long = "directory", value_name = "DIR|URL")]
    pub directory: ArchiveArg,
    /// Object storage: the cluster to prune (default: the only one stored).
    #[arg(long = "system-identifier", value_name = "N")]
    pub system_identifier: Option<u64>,
    /// Keep this WAL file and everything after it, on every timeline (pg_archivecleanup's
    /// OLDESTKEPTWALFILE): a segment, NAME.partial or NAME.XXXXXXXX.backup name.
    #[arg(long = "before", value_name = "WALFILE")]
    pub before: Option<String>,
    /// Keep what this base backup needs: its backup_manifest, backup_label, or backup history file
    /// (a path, or a .backup name in DIR).
    #[arg(long = "before-backup", value_name = "FILE")]
    pub before_backup: Option<PathBuf>,
    /// Keep the segment holding this LSN and everything after it.
    #[arg(long = "before-lsn", value_name = "LSN")]
    pub before_lsn: Option<Lsn>,
    /// Only remove files last modified longer ago than this (e.g. 7d, 36h, 2w, 90min).
    #[arg(long = "older-than", value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Allow --older-than without a point to keep from (it may remove WAL a backup needs).
    #[arg(long = "force")]
    pub force: bool,
    /// List what would be removed; remove nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// The cluster's wal_segment_size, for --before-lsn and --before-backup; default: from the
    /// segments' headers.
    #[arg(long = "wal-segsize", value_name = "SIZE", value_parser = parse_segment_size)]
    pub wal_segsize: Option<WalSegmentSize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the newest N backups stored in the archive (walrelay backup): remove the older ones,
    /// and the WAL that no kept backup needs.
    #[arg(long = "keep-backups", value_name = "N")]
    pub keep_backups: Option<usize>,
    /// Keep the stored backups that ended within D days (with --keep-backups: either rule keeps
    /// a backup; the newest is always kept).
    #[arg(long = "keep-days", value_name = "D")]
    pub keep_days: Option<u64>,
}

/// Runs `walrelay prune`.
pub async fn run_prune(mut args: PruneArgs) -> Result<i32> {
    let unreachable = |e| crate::exit::archive_unreachable(e, "so pruning stopped; run it again");
    if args.keep_backups.is_some() || args.keep_days.is_some() {
        crate::backup::apply_retention(&mut args)
            .await
            .map_err(unreachable)?;
    }
    if let ArchiveLocation::Store(url) = args.directory.get()? {
        return prune_store_cmd(&args, url).await.map_err(unreachable);
    }
    tokio::task::spawn_blocking(move || prune_blocking(&args))
        .await
        .context("prune failed unexpectedly")?
}

/// The point to keep from, checked against `--older-than` and `--force`.
fn checked_prune_point(args: &PruneArgs) -> Result<Option<PrunePoint>> {
    let keep_from = prune_point(args)?;
    match (&keep_from, args.older_than) {
        (None, None) => return Err(crate::exit::usage(
            "prune needs a point to keep from: --before WALFILE, --before-backup FILE or --before-lsn LSN"
        )),
        (None, Some(_)) if !args.force => return Err(crate::exit::usage(
            "--older-than alone may remove WAL that a base backup still needs: add --before-backup FILE (or --before / --before-lsn), or --force if every backup is younger"
        )),
        _ => {}
    }
    Ok(keep_from)
}

/// Whether the point to keep from needs the segment size (an LSN does; names compare as names).
fn prune_needs_size(keep_from: &Option<PrunePoint>) -> bool {
    matches!(
        keep_from,
        Some(PrunePoint::Lsn(_) | PrunePoint::BackupManifest(_) | PrunePoint::BackupLabel(_))
    )
}

/// `prune` of one cluster's WAL in object storage: the same rules, objects deleted.
async fn prune_store_cmd(args: &PruneArgs, url: &StoreUrl) -> Result<i32> {
    let keep_from = checked_prune_point(args)?;
    let (store, layout) = open_cluster_store(url, args.system_identifier).await?;
    let seg_size = match args.wal_segsize {
        Some(s) => s,
        None if prune_needs_size(&keep_from) => {
            walrelay_store::infer_store_segment_size(store.as_ref(), layout)
                .await
                .context("find the archive's segment size (or pass --wal-segsize)")?
                .unwrap_or_default()
        }
        None => WalSegmentSize::default(),
    };
    let opts = PruneOptions {
        keep_from,
        older_than: args.older_than,
        dry_run: args.dry_run,
    };
    let report = walrelay_store::prune_store(store.as_ref(), layout, seg_size, &opts)
        .await
        .with_context(|| format!("prune {url}"))?;
    print_prune_report(args, &report)
}

fn print_prune_report(args: &PruneArgs, report: &PruneReport) -> Result<i32> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", human_prune_report(report, args.older_than));
    }
    Ok(0)
}

fn prune_blocking(args: &PruneArgs) -> Result<i32> {
    let ArchiveLocation::Dir(dir) = args.directory.get()? else {
        return Err(anyhow::anyhow!(
            "internal: a store URL reached the directory prune"
        ));
    };
    let keep_from = checked_prune_point(args)?;
    if !dir.is_dir() {
        return Err(crate::exit::local(format!(
            "archive directory {} is missing or not a directory: fix the -D argument",
            dir.display()
        )));
    }
    if let Some(what) = crate::wal_dirs::server_directory(dir) {
        return Err(crate::exit::local(format!(
            "{what}: prune removes files of walrelay archives only; a server removes its own WAL at checkpoints (see wal_keep_size, max_slot_wal_keep_size and its replication slots)"
        )));
    }
    let seg_size = match args.wal_segsize {
        Some(s) => s,
        None if prune_needs_size(&keep_from) => infer_segment_size(dir)
            .context("find the archive's segment size (or pass --wal-segsize)")?
            .unwrap_or_default(),
        // Names are compared as names: the size does not matter.
        None => WalSegmentSize::default(),
    };
    let opts = PruneOptions {
        keep_from,
        older_than: args.older_than,
        dry_run: args.dry_run,
    };
    let report = prune(dir, seg_size, &opts).with_context(|| format!("prune {}", dir.display()))?;
    print_prune_report(args, &report)
}

/// The point to keep from, with `--before-backup FILE` resolved by the file's content.
fn prune_point(args: &PruneArgs) -> Result<Option<PrunePoint>> {
    if let Some(name) = &args.before {
        return Ok(Some(PrunePoint::WalFile(name.clone())));
    }
    if let Some(lsn) = args.before_lsn {
        return Ok(Some(PrunePoint::Lsn(lsn)));
    }
    let Some(file) = &args.before_backup else {
        return Ok(None);
    };
    // A bare .backup name is looked up in the archive directory, where the archiver put it.
    let mut candidates = vec![file.clone()];
    if let Ok(ArchiveLocation::Dir(dir)) = args.directory.get() {
        candidates.push(dir.join(file));
    }
    if let Some(path) = candidates.iter().find(|p| p.is_file()) {
        let head = std::fs::read(path)
            .map(|b| b.into_iter().find(|c| !c.is_ascii_whitespace()))
            .with_context(|| format!("read {}", path.display()))?;
        return Ok(Some(if head == Some(b'{') {
            PrunePoint::BackupManifest(path.clone())
        } else {
            PrunePoint::BackupLabel(path.clone())
        }));
    }
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if matches!(
        WalFileName::parse(name),
        Some(WalFileName::BackupHistory { .. })
    ) {
        // pg_archivecleanup takes the name alone; its segment part is all that counts.
        return Ok(Some(PrunePoint::WalFile(name.to_string())));
    }
    Err(crate::exit::usage(format!(
        "backup file {} not found: pass a backup_manifest, a backup_label, or a NAME.XXXXXXXX.backup file",
        file.display()
    )))
}

fn human_prune_report(r: &PruneReport, older_than: Option<Duration>) -> String {
    let mut s = String::new();
    let mut rule = Vec::new();
    if let Some(k) = &r.keep_from {
        rule.push(format!("before {k} (any timeline)"));
    }
    if let Some(age) = older_than {
        rule.push(format!("older than {}", human_duration(age)));
    }
    let rule = rule.join(" and ");
    if let Some(floor) = r.slot_floor {
        let _ = writeln!(
            s,
            "kept: WAL from {floor} on, which a slot of walrelay serve still needs"
        );
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    if r.removed.is_empty() {
        let _ = writeln!(s, "nothing to remove: no WAL {rule}");
        return s;
    }
    for name in &r.removed {
        let _ = writeln!(s, "{verb} {name}");
    }
    let _ = writeln!(
        s,
        "{verb} {} files ({}): WAL {rule}",
        r.removed.len(),
        human_bytes(r.bytes)
    );
    s
}

// ------------------------------------------------------------------------------ value parsers

/// A `wal_segment_size`: with a unit as `SHOW wal_segment_size` prints it (`16MB`, `1GB`, `kB`,
/// case-insensitive), or a bare number — megabytes up to 1024 (as `initdb --wal-segsize`), bytes
/// from 1048576 on (as pg_controldata prints it). The two ranges cannot overlap: valid sizes are
/// 1 MB to 1 GB.
pub fn parse_segment_size(s: &str) -> std::result::Result<WalSegmentSize, String> {
    let t = s.trim();
    let err = |e: String| {
        format!("invalid --wal-segsize {s:?}: {e}; give it as SHOW wal_segment_size prints it, like 16MB")
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| err("too large".into()))?;
        let bytes = if n <= 1024 { n * 1024 * 1024 } else { n };
        return WalSegmentSize::new(bytes).map_err(|e| err(e.to_string()));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && !c.is_ascii_whitespace())
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = match unit.to_ascii_lowercase().as_str() {
        "b" => "B",
        "kb" => "kB",
        "mb" => "MB",
        "gb" => "GB",
        _ => return Err(err(format!("unknown unit {unit:?}"))),
    };
    WalSegmentSize::parse_show(&format!("{}{unit}", num.trim())).map_err(|e| err(e.to_string()))
}

/// A duration like `7d`, `36h`, `1d12h`, `90min`, `2w` or `30s` (also `7 days`, `12 hours`): one
/// or more numbers, each with a unit. A bare number is refused: minutes or days?
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let err = |why: &str| {
        format!("invalid duration {s:?}: {why}; use a number with a unit, like 7d, 36h, 90min, 2w")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let secs: u64 = match unit {
            "" => return Err(err("missing unit")),
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return Err(err(&format!("unknown unit {unit:?}"))),
        };
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too long"))?;
    }
    Ok(Duration::from_secs(total))
}

/// [`crate::bootstrap::human_bytes`], with sizes below 1 kB spelled out in the reports.
fn human_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        crate::bootstrap::human_bytes(n)
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    // The largest unit that divides it.
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("min", 60)] {
        if s >= secs && s.rem_euclid(secs) == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn segment_sizes() {
        let mb = |n: u64| WalSegmentSize::new(n << 20).unwrap();
        for (input, want) in [
            ("16MB", mb(16)),
            ("16mb", mb(16)),
            ("1GB", mb(1024)),
            ("1024kB", mb(1)),
            ("16", mb(16)),
            ("1024", mb(1024)),
            ("16777216", mb(16)),
            (" 64MB ", mb(64)),
            ("2 MB", mb(2)),
        ] {
            assert_eq!(parse_segment_size(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "MB",
            "3MB",
            "0",
            "2048",
            "512kB",
            "16XB",
            "-16MB",
            "2GB",
            "16 M B",
            "1e6",
            "99999999999999999999999",
        ] {
            let e = parse_segment_size(bad).unwrap_err();
            assert!(e.contains("--wal-segsize"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        for (input, want) in [
            ("7d", h(7 * 24)),
            ("36h", h(36)),
            ("1d12h", h(36)),
            ("2w", h(14 * 24)),
            ("90min", Duration::from_secs(90 * 60)),
            ("30s", Duration::from_secs(30)),
            ("7 days", h(7 * 24)),
            ("1 day 2 hours", h(26)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "-7d",
            "7d-",
            "1.5h",
            "99999999999999999999d",
            "9999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(human_duration(h(48)), "2d");
        assert_eq!(human_duration(Duration::from_secs(90 * 60)), "90min");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(12), "12 bytes");
    }

    fn prune_args(dir: &Path) -> PruneArgs {
        PruneArgs {
            directory: dir.to_string_lossy().parse().unwrap(),
            system_identifier: None,
            before: None,
            before_backup: None,
            before_lsn: None,
            older_than: None,
            force: false,
            dry_run: true,
            wal_segsize: None,
            json: false,
            keep_backups: None,
            keep_days: None,
        }
    }

    #[test]
    fn backup_files_are_told_apart_by_content() {
        let d = tempfile::tempdir().unwrap();
        let manifest = d.path().join("backup_manifest");
        std::fs::write(&manifest, "\n  {\"WAL-Ranges\": []}").unwrap();
        let label = d.path().join("backup_label");
        std::fs::write(&label, "START WAL LOCATION: 0/2000028 (file x)\n").unwrap();
        let history = "000000010000000000000002.00000028.backup";
        std::fs::write(d.path().join(history), "START WAL LOCATION: 0/2000028\n").unwrap();

        let point = |file: &str| {
            let mut a = prune_args(d.path());
            a.before_backup = Some(PathBuf::from(file));
            prune_point(&a)
        };
        assert_eq!(
            point(manifest.to_str().unwrap()).unwrap(),
            Some(PrunePoint::BackupManifest(manifest.clone()))
        );
        assert_eq!(
            point(label.to_str().unwrap()).unwrap(),
            Some(PrunePoint::BackupLabel(label.clone()))
        );
        // A name in the archive directory.
        assert_eq!(
            point(history).unwrap(),
            Some(PrunePoint::BackupLabel(d.path().join(history)))
        );
        // A .backup name that is not there: its name is enough (pg_archivecleanup).
        let gone = "000000010000000000000009.00000028.backup";
        assert_eq!(
            point(gone).unwrap(),
            Some(PrunePoint::WalFile(gone.to_string()))
        );
        let e = point("/no/such/backup_manifest").unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn age_alone_needs_force() {
        let d = tempfile::tempdir().unwrap();
        let mut a = prune_args(d.path());
        a.older_than = Some(Duration::from_secs(86_400));
        let e = prune_blocking(&a).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        a.force = true;
        assert_eq!(prune_blocking(&a).unwrap(), 0);
        let e = prune_blocking(&prune_args(d.path())).unwrap_err();
        assert!(e.to_string().contains("--before"), "{e}");
    }
}

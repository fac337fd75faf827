//! Test-only stand-ins for the WAL streaming engine (which lives in another crate).
//!
//! * [`CopyFromPrimaryPgWal`] does not stream at all: when the backup ends it copies the segments
//!   the backup needs out of the primary's own `pg_wal` (the tests run on the same machine as the
//!   primary), marks them `.done`, and reports. Enough to exercise `bootstrap`'s stream path and to
//!   produce a directory `pg_verifybackup` and a standby accept.
//! * [`FailingStreamer`] reports a failure after a delay, as a stream whose connection dropped.

// Test-only file: helpers panic on setup failure by design.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walrelay_basebackup::{
    BoxFuture, StartWal, WalStreamError, WalStreamHandle, WalStreamer, WalSummary,
};
use walrelay_protocol::{Lsn, SegmentId, XLogSegNo};

/// Copies finished segments from the primary's `pg_wal` at `finish`.
pub struct CopyFromPrimaryPgWal {
    pub primary_pg_wal: PathBuf,
    /// The parameters `bootstrap` passed, for assertions.
    pub started: Arc<Mutex<Option<StartWal>>>,
}

impl CopyFromPrimaryPgWal {
    pub fn new(primary_pg_wal: PathBuf) -> Self {
        CopyFromPrimaryPgWal {
            primary_pg_wal,
            started: Arc::new(Mutex::new(None)),
        }
    }
}

impl WalStreamer for CopyFromPrimaryPgWal {
    fn start(
        &self,
        params: StartWal,
    ) -> BoxFuture<'_, Result<Box<dyn WalStreamHandle>, WalStreamError>> {
        *self.started.lock().unwrap() = Some(params.clone());
        let src = self.primary_pg_wal.clone();
        Box::pin(async move {
            assert!(
                params.pg_wal_dir.join("archive_status").is_dir(),
                "pg_wal/archive_status must exist before the stream starts"
            );
            Ok(Box::new(CopyHandle { src, params }) as Box<dyn WalStreamHandle>)
        })
    }
}

struct CopyHandle {
    src: PathBuf,
    params: StartWal,
}

impl CopyHandle {
    fn copy(&self, end_lsn: Lsn) -> Result<WalSummary, WalStreamError> {
        let seg = self.params.wal_segment_size;
        let first = seg.segno(self.params.start_lsn).0;
        // BASE_BACKUP switches segments at its end, so the segment holding end_lsn - 1 is complete.
        let last = seg.segno(Lsn(end_lsn.0 - 1)).0;
        let mut summary = WalSummary {
            flushed_lsn: end_lsn,
            ..Default::default()
        };
        for n in first..=last {
            let name = SegmentId::new(self.params.timeline, XLogSegNo(n)).file_name(seg);
            let to = self.params.pg_wal_dir.join(&name);
            fs::copy(self.src.join(&name), &to)?;
            self.params.owner.apply(&to)?;
            let done = self
                .params
                .pg_wal_dir
                .join("archive_status")
                .join(format!("{name}.done"));
            fs::write(&done, b"")?;
            self.params.owner.apply(&done)?;
            summary.segments += 1;
            summary.bytes += seg.as_u64();
        }
        Ok(summary)
    }
}

impl WalStreamHandle for CopyHandle {
    fn failed(&mut self) -> BoxFuture<'_, WalStreamError> {
        Box::pin(std::future::pending())
    }

    fn finish(
        self: Box<Self>,
        end_lsn: Lsn,
    ) -> BoxFuture<'static, Result<WalSummary, WalStreamError>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.copy(end_lsn))
                .await
                .map_err(|e| -> WalStreamError { e.to_string().into() })?
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A stream that dies `after` its start.
pub struct FailingStreamer {
    pub after: Duration,
    pub aborted: Arc<AtomicBool>,
}

impl FailingStreamer {
    pub fn new(after: Duration) -> Self {
        FailingStreamer {
            after,
            aborted: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl WalStreamer for FailingStreamer {
    fn start(
        &self,
        _params: StartWal,
    ) -> BoxFuture<'_, Result<Box<dyn WalStreamHandle>, WalStreamError>> {
        let deadline = tokio::time::Instant::now() + self.after;
        let aborted = self.aborted.clone();
        Box::pin(async move {
            Ok(Box::new(FailingHandle { deadline, aborted }) as Box<dyn WalStreamHandle>)
        })
    }
}

struct FailingHandle {
    deadline: tokio::time::Instant,
    aborted: Arc<AtomicBool>,
}

impl WalStreamHandle for FailingHandle {
    fn failed(&mut self) -> BoxFuture<'_, WalStreamError> {
        let deadline = self.deadline;
        Box::pin(async move {
            tokio::time::sleep_until(deadline).await;
            "stand-in WAL stream: server closed the connection unexpectedly".into()
        })
    }

    fn finish(
        self: Box<Self>,
        _end_lsn: Lsn,
    ) -> BoxFuture<'static, Result<WalSummary, WalStreamError>> {
        Box::pin(async { Err("stand-in WAL stream failed".into()) })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.aborted.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }
}

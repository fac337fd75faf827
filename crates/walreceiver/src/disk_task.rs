//! The disk task: a [`SegmentWriter`] on a blocking thread, fed by the network task through a bounded
//! channel — the shape of neon's safekeeper (`receive_wal.rs` → `wal_storage.rs`).
//!
//! ```text
//!  network task ── DiskRequest (bounded mpsc) ──► disk task (spawn_blocking)
//!       ▲                                             │ write, fsync when the queue drains, rename
//!       └──────── DiskProgress (watch) ◄──────────────┘
//! ```
//!
//! * Backpressure is real: when the disk falls behind, [`DiskTask::send`] waits, the network task
//!   stops reading, and TCP flow control slows the server down.
//! * fsyncs are batched: the task writes everything queued, and flushes when the queue is empty, when
//!   [`DiskRequest::Flush`] asks for it, or when more than `max_unflushed_bytes` are pending (so a
//!   queue that never drains during catch-up still gets durable progress). Segment completion always
//!   flushes (see the writer).
//! * [`DiskProgress`] carries `write_lsn`/`flush_lsn` for the feedback state machine; `flush_lsn` is
//!   published only after the fsyncs it depends on.
//! * The first error stops the task; [`DiskTask::finish`] returns it.
//!
//! A synchronous standby wants the opposite trade: every commit on the primary waits for our flush,
//! and the two thread hand-offs above (network task → disk thread → network task) sit on that path.
//! [`DiskTask::inline`] runs the same writer on the network task itself, as pg_receivewal does:
//! requests are applied as they are sent (`write` into the page cache), and the fsync comes when
//! the network task has nothing more at hand ([`DiskTask::settle`]), so one fsync still covers every
//! message already received (group commit). The published positions, the flush rules and the error
//! behaviour are the same in both modes.

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use walrelay_protocol::{Lsn, TimelineId};

use crate::fs::WalFs;
use crate::writer::{SegmentWriter, WriterError};

/// What the network task asks the disk task to do, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskRequest {
    /// WAL bytes starting at `lsn` (the payload of an XLogData message).
    Write { lsn: Lsn, data: Bytes },
    /// End of timeline: continue on `timeline` from `switch_lsn` (see
    /// [`SegmentWriter::switch_timeline`]).
    SwitchTimeline {
        timeline: TimelineId,
        switch_lsn: Lsn,
    },
    /// A `TIMELINE_HISTORY` result to store before streaming that timeline.
    WriteHistory {
        timeline: TimelineId,
        content: Bytes,
    },
    /// Flush now even if more requests are queued (e.g. the server asked for a reply).
    Flush,
}

/// Positions published by the disk task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskProgress {
    pub timeline: TimelineId,
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
}

/// Tuning of the disk task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskTaskConfig {
    /// Requests in flight between the tasks; with 128 kB messages, 64 is 8 MB.
    pub queue_depth: usize,
    /// Flush even though requests are still queued once this many bytes are not durable.
    pub max_unflushed_bytes: u64,
}

impl Default for DiskTaskConfig {
    fn default() -> Self {
        DiskTaskConfig {
            queue_depth: 64,
            max_unflushed_bytes: 16 * 1024 * 1024,
        }
    }
}

/// [`DiskTask::send`] failed because the task has ended (after an error, or after `finish`).
#[derive(Debug, Error)]
#[error("the WAL disk task has stopped; its error is returned by DiskTask::finish")]
pub struct DiskTaskStopped;

/// Handle of a running disk task.
#[derive(Debug)]
pub struct DiskTask {
    mode: Mode,
    progress: watch::Receiver<DiskProgress>,
}

#[derive(Debug)]
enum Mode {
    /// On a blocking thread, fed through a channel.
    Thread {
        tx: mpsc::Sender<DiskRequest>,
        join: JoinHandle<Result<Lsn, WriterError>>,
    },
    /// On the caller's task (see the module documentation). The mutex is never contended: only
    /// the network task uses it; it keeps `send` on `&self` as in thread mode.
    Inline(std::sync::Mutex<InlineDisk>),
}

impl DiskTask {
    /// Moves `writer` onto a blocking thread of the current tokio runtime.
    pub fn spawn<F>(writer: SegmentWriter<F>, config: DiskTaskConfig) -> DiskTask
    where
        F: WalFs + Send + 'static,
        F::File: Send,
    {
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let (progress_tx, progress) = watch::channel(progress_of(&writer));
        let join = tokio::task::spawn_blocking(move || {
            run(writer, rx, &progress_tx, config.max_unflushed_bytes)
        });
        DiskTask {
            mode: Mode::Thread { tx, join },
            progress,
        }
    }

    /// Keeps `writer` on the calling task: [`send`](Self::send) writes at once, and
    /// [`settle`](Self::settle) flushes. For a synchronous standby, where the latency of every
    /// flush counts and the throughput of catch-up does not.
    pub fn inline<F>(writer: SegmentWriter<F>, config: DiskTaskConfig) -> DiskTask
    where
        F: WalFs + Send + 'static,
        F::File: Send,
    {
        let (progress_tx, progress) = watch::channel(progress_of(&writer));
        DiskTask {
            mode: Mode::Inline(std::sync::Mutex::new(InlineDisk {
                writer: Some(Box::new(writer)),
                progress: Some(progress_tx),
                error: None,
                max_unflushed_bytes: config.max_unflushed_bytes,
            })),
            progress,
        }
    }

    /// Whether the writer runs on the caller's task ([`DiskTask::inline`]).
    pub fn is_inline(&self) -> bool {
        matches!(self.mode, Mode::Inline(_))
    }

    /// A sender for the network task (thread mode only: an inline task has no queue).
    pub fn sender(&self) -> Option<mpsc::Sender<DiskRequest>> {
        match &self.mode {
            Mode::Thread { tx, .. } => Some(tx.clone()),
            Mode::Inline(_) => None,
        }
    }

    /// Queues a request, waiting while the queue is full (inline: applies it now). Cancellation-safe:
    /// if the future is dropped before it completes, the request was not queued.
    pub async fn send(&self, request: DiskRequest) -> Result<(), DiskTaskStopped> {
        match &self.mode {
            Mode::Thread { tx, .. } => tx.send(request).await.map_err(|_| DiskTaskStopped),
            Mode::Inline(disk) => lock(disk).apply(Some(request), false),
        }
    }

    /// Tells the task that no more requests are at hand for now. Inline, this is where the
    /// group-commit fsync happens; a disk thread notices an empty queue by itself.
    pub fn settle(&self) -> Result<(), DiskTaskStopped> {
        match &self.mode {
            Mode::Thread { .. } => Ok(()),
            Mode::Inline(disk) => lock(disk).apply(None, true),
        }
    }

    /// Watch the published positions.
    pub fn progress(&self) -> watch::Receiver<DiskProgress> {
        self.progress.clone()
    }

    /// Clean shutdown: closes this handle's sender (other senders from [`sender`](Self::sender) must be
    /// dropped too), waits for the queued requests, the final flush and close. Returns the final flush
    /// position, or the error that stopped the task.
    pub async fn finish(self) -> Result<Lsn, WriterError> {
        match self.mode {
            Mode::Thread { tx, join } => {
                drop(tx);
                match join.await {
                    Ok(r) => r,
                    Err(e) => Err(WriterError::Poisoned(format!("WAL disk task failed: {e}"))),
                }
            }
            Mode::Inline(disk) => {
                let disk = disk.into_inner().unwrap_or_else(|p| p.into_inner());
                disk.finish()
            }
        }
    }
}

fn lock(disk: &std::sync::Mutex<InlineDisk>) -> std::sync::MutexGuard<'_, InlineDisk> {
    // A panic while holding the lock leaves the writer poisoned by its own rules; carry on to
    // report that rather than panic again.
    disk.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer operations the inline mode needs, without its file-system type parameter.
trait DiskSink: Send {
    fn handle(&mut self, request: DiskRequest) -> Result<bool, WriterError>;
    fn flush(&mut self) -> Result<(), WriterError>;
    fn unflushed(&self) -> u64;
    fn progress(&self) -> DiskProgress;
    fn close(self: Box<Self>) -> Result<Lsn, WriterError>;
}

impl<F> DiskSink for SegmentWriter<F>
where
    F: WalFs + Send,
    F::File: Send,
{
    fn handle(&mut self, request: DiskRequest) -> Result<bool, WriterError> {
        handle(self, request)
    }
    fn flush(&mut self) -> Result<(), WriterError> {
        SegmentWriter::flush(self).map(|_| ())
    }
    fn unflushed(&self) -> u64 {
        unflushed_bytes(self)
    }
    fn progress(&self) -> DiskProgress {
        progress_of(self)
    }
    fn close(self: Box<Self>) -> Result<Lsn, WriterError> {
        SegmentWriter::close(*self)
    }
}

/// The inline mode's state: the writer until it fails, then the error.
struct InlineDisk {
    writer: Option<Box<dyn DiskSink>>,
    /// Dropped with the writer, so that watchers see the task end as with a disk thread.
    progress: Option<watch::Sender<DiskProgress>>,
    error: Option<WriterError>,
    max_unflushed_bytes: u64,
}

impl std::fmt::Debug for InlineDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineDisk")
            .field("running", &self.writer.is_some())
            .field("error", &self.error)
            .finish()
    }
}

impl InlineDisk {
    /// Applies `request` (if any), then flushes when asked to (`settle`), when the request asks
    /// for it, or when too much is pending — the disk thread's rules, with "the queue drained"
    /// replaced by `settle`. The first error ends the task, as on the thread.
    fn apply(&mut self, request: Option<DiskRequest>, settle: bool) -> Result<(), DiskTaskStopped> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(DiskTaskStopped);
        };
        let result = (|| {
            let flush_now = match request {
                Some(r) => writer.handle(r)?,
                None => false,
            };
            if settle || flush_now || writer.unflushed() > self.max_unflushed_bytes {
                writer.flush()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Some(tx) = &self.progress {
                    publish_progress(tx, writer.progress());
                }
                Ok(())
            }
            Err(e) => {
                self.error = Some(e);
                self.writer = None;
                self.progress = None;
                Err(DiskTaskStopped)
            }
        }
    }

    fn finish(mut self) -> Result<Lsn, WriterError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some(mut writer) = self.writer.take() else {
            return Err(WriterError::Poisoned(
                "WAL disk task already finished".into(),
            ));
        };
        writer.flush()?;
        if let Some(tx) = &self.progress {
            tx.send_replace(writer.progress());
        }
        writer.close()
    }
}

fn progress_of<F: WalFs>(w: &SegmentWriter<F>) -> DiskProgress {
    DiskProgress {
        timeline: w.timeline(),
        write_lsn: w.write_lsn(),
        flush_lsn: w.flush_lsn(),
    }
}

fn publish<F: WalFs>(w: &SegmentWriter<F>, tx: &watch::Sender<DiskProgress>) {
    publish_progress(tx, progress_of(w));
}

/// Publishes `new`, waking the watchers only if something changed.
fn publish_progress(tx: &watch::Sender<DiskProgress>, new: DiskProgress) {
    tx.send_if_modified(|p| {
        let changed = *p != new;
        *p = new;
        changed
    });
}

/// Bytes taken by the writer and not durable yet: the measure of `max_unflushed_bytes`.
fn unflushed_bytes<F: WalFs>(w: &SegmentWriter<F>) -> u64 {
    w.next_lsn().saturating_sub(w.flush_lsn())
}

/// Applies one request; returns whether it asks for an immediate flush.
fn handle<F: WalFs>(w: &mut SegmentWriter<F>, request: DiskRequest) -> Result<bool, WriterError> {
    match request {
        DiskRequest::Write { lsn, data } => w.write(lsn, &data).map(|()| false),
        DiskRequest::SwitchTimeline {
            timeline,
            switch_lsn,
        } => w.switch_timeline(timeline, switch_lsn).map(|()| false),
        DiskRequest::WriteHistory { timeline, content } => {
            w.write_history_file(timeline, &content).map(|()| false)
        }
        DiskRequest::Flush => Ok(true),
    }
}

fn run<F: WalFs>(
    mut writer: SegmentWriter<F>,
    mut rx: mpsc::Receiver<DiskRequest>,
    progress: &watch::Sender<DiskProgress>,
    max_unflushed_bytes: u64,
) -> Result<Lsn, WriterError> {
    while let Some(request) = rx.blocking_recv() {
        let mut flush_now = handle(&mut writer, request)?;
        // Take whatever else is already queued before paying for an fsync.
        while !flush_now && unflushed_bytes(&writer) <= max_unflushed_bytes {
            publish(&writer, progress);
            match rx.try_recv() {
                Ok(request) => flush_now = handle(&mut writer, request)?,
                // Empty: the queue drained. Disconnected: the outer loop ends after this flush.
                Err(_) => break,
            }
        }
        writer.flush()?;
        publish(&writer, progress);
    }
    writer.flush()?;
    publish(&writer, progress);
    writer.close()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use walrelay_protocol::WalSegmentSize;

    use super::*;
    use crate::fs::testing::{FaultFs, FsOp};
    use crate::writer::WriterConfig;

    const MB: u64 = 1024 * 1024;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB).unwrap()
    }

    fn bytes(start: u64, len: usize) -> Bytes {
        (start..start + len as u64)
            .map(|p| (p % 253) as u8)
            .collect::<Vec<_>>()
            .into()
    }

    fn writes(start: u64, total: usize, chunk: usize) -> Vec<DiskRequest> {
        (0..total)
            .step_by(chunk)
            .map(|at| DiskRequest::Write {
                lsn: Lsn(start + at as u64),
                data: bytes(start + at as u64, chunk.min(total - at)),
            })
            .collect()
    }

    /// A writer at 0/0 on timeline 1 over a [`FaultFs`] (returned too, to inject failures).
    fn fault_writer(dir: &std::path::Path) -> (FaultFs, SegmentWriter<FaultFs>) {
        let fs = FaultFs::default();
        let w = SegmentWriter::with_fs(
            fs.clone(),
            WriterConfig::archive(dir, seg()),
            TimelineId(1),
            Lsn(0),
        )
        .unwrap();
        (fs, w)
    }

    #[tokio::test]
    async fn streams_through_the_queue_and_finishes_durably() {
        streams_and_finishes_durably(false).await;
    }

    #[tokio::test]
    async fn streams_inline_and_finishes_durably() {
        streams_and_finishes_durably(true).await;
    }

    async fn streams_and_finishes_durably(inline: bool) {
        let d = tempfile::tempdir().unwrap();
        let w = SegmentWriter::new(
            WriterConfig::archive(d.path(), seg()),
            TimelineId(1),
            Lsn(MB),
        )
        .unwrap();
        let config = DiskTaskConfig {
            queue_depth: 4,
            ..Default::default()
        };
        let task = if inline {
            DiskTask::inline(w, config)
        } else {
            DiskTask::spawn(w, config)
        };
        let progress = task.progress();
        let total = 2 * MB as usize + 12_345;
        for (i, r) in writes(MB, total, 100_000).into_iter().enumerate() {
            task.send(r).await.unwrap();
            if i % 3 == 0 {
                task.settle().unwrap();
            }
        }
        let end = Lsn(MB + total as u64);
        assert_eq!(task.finish().await.unwrap(), end);
        let p = *progress.borrow();
        assert_eq!(
            p,
            DiskProgress {
                timeline: TimelineId(1),
                write_lsn: end,
                flush_lsn: end
            }
        );
        let all = bytes(MB, total);
        assert_eq!(
            fs::read(d.path().join("000000010000000000000001")).unwrap(),
            &all[..MB as usize]
        );
        assert_eq!(
            fs::read(d.path().join("000000010000000000000002")).unwrap(),
            &all[MB as usize..2 * MB as usize]
        );
        let partial = fs::read(d.path().join("000000010000000000000003.partial")).unwrap();
        assert_eq!(&partial[..12_345], &all[2 * MB as usize..]);
    }

    #[tokio::test]
    async fn timeline_switch_and_history_travel_in_order() {
        let d = tempfile::tempdir().unwrap();
        let w = SegmentWriter::new(
            WriterConfig::archive(d.path(), seg()),
            TimelineId(1),
            Lsn(0),
        )
        .unwrap();
        let task = DiskTask::spawn(w, DiskTaskConfig::default());
        let tx = task.sender().unwrap();
        tx.send(DiskRequest::Write {
            lsn: Lsn(0),
            data: bytes(0, 5000),
        })
        .await
        .unwrap();
        tx.send(DiskRequest::SwitchTimeline {
            timeline: TimelineId(2),
            switch_lsn: Lsn(4000),
        })
        .await
        .unwrap();
        tx.send(DiskRequest::WriteHistory {
            timeline: TimelineId(2),
            content: Bytes::from_static(b"1\t0/FA0\tno recovery target specified\n"),
        })
        .await
        .unwrap();
        tx.send(DiskRequest::Write {
            lsn: Lsn(0),
            data: bytes(0, 6000),
        })
        .await
        .unwrap();
        drop(tx);
        assert_eq!(task.finish().await.unwrap(), Lsn(6000));
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "000000010000000000000000.partial",
                "00000002.history",
                "000000020000000000000000.partial",
            ]
        );
    }

    #[tokio::test]
    async fn an_fsync_failure_stops_the_task_and_flush_is_never_published_past_it() {
        let d = tempfile::tempdir().unwrap();
        let (fs, w) = fault_writer(d.path());
        fs.fail_syncs_from(0, libc::EIO);
        let task = DiskTask::spawn(w, DiskTaskConfig::default());
        let mut progress = task.progress();
        task.send(DiskRequest::Write {
            lsn: Lsn(0),
            data: bytes(0, 1000),
        })
        .await
        .unwrap();
        // The task ends: the watch sender is dropped.
        while progress.changed().await.is_ok() {}
        assert_eq!(progress.borrow().flush_lsn, Lsn(0));
        let e = task
            .send(DiskRequest::Write {
                lsn: Lsn(1000),
                data: bytes(1000, 10),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("finish"), "{e}");
        let e = task.finish().await.unwrap_err();
        assert!(matches!(e, WriterError::SyncFailed(_)), "{e}");
    }

    #[tokio::test]
    async fn inline_fsyncs_when_settled_and_stops_at_the_first_error() {
        let d = tempfile::tempdir().unwrap();
        let (fs, w) = fault_writer(d.path());
        let task = DiskTask::inline(
            w,
            DiskTaskConfig {
                queue_depth: 1,
                max_unflushed_bytes: 50_000,
            },
        );
        assert!(task.sender().is_none());
        let mut progress = task.progress();
        let syncs = || {
            fs.ops()
                .into_iter()
                .filter(|op| matches!(op, FsOp::SyncData(_)))
                .count()
        };
        // Taken at once (into the writer's buffer), durable only when settled: one fsync for
        // three messages.
        for r in writes(0, 30_000, 10_000) {
            task.send(r).await.unwrap();
        }
        assert_eq!(progress.borrow_and_update().flush_lsn, Lsn(0));
        let before = syncs();
        task.settle().unwrap();
        assert_eq!(syncs(), before + 1);
        assert!(progress.has_changed().unwrap());
        assert_eq!(progress.borrow_and_update().flush_lsn, Lsn(30_000));
        // More than max_unflushed_bytes pending: flushed without waiting for settle.
        for r in writes(30_000, 60_000, 10_000) {
            task.send(r).await.unwrap();
        }
        assert!(progress.borrow_and_update().flush_lsn > Lsn(30_000));
        // A Flush request flushes at once.
        task.send(DiskRequest::Write {
            lsn: Lsn(90_000),
            data: bytes(90_000, 100),
        })
        .await
        .unwrap();
        task.send(DiskRequest::Flush).await.unwrap();
        assert_eq!(progress.borrow_and_update().flush_lsn, Lsn(90_100));
        // A failed fsync ends the task: nothing more is accepted, flush never moves past it, the
        // watchers see the end, and finish() returns the error.
        fs.fail_syncs_from(0, libc::EIO);
        task.send(DiskRequest::Write {
            lsn: Lsn(90_100),
            data: bytes(90_100, 100),
        })
        .await
        .unwrap();
        assert!(task.settle().is_err());
        assert!(progress.changed().await.is_err());
        assert_eq!(progress.borrow().flush_lsn, Lsn(90_100));
        assert!(task.send(DiskRequest::Flush).await.is_err());
        let e = task.finish().await.unwrap_err();
        assert!(matches!(e, WriterError::SyncFailed(_)), "{e}");
    }

    /// Runs the loop on this thread over a pre-filled queue and returns the recorded fsyncs.
    fn run_queued(requests: Vec<DiskRequest>, max_unflushed_bytes: u64) -> (Vec<FsOp>, Lsn) {
        let d = tempfile::tempdir().unwrap();
        let (fs, w) = fault_writer(d.path());
        let (tx, rx) = mpsc::channel(requests.len() + 1);
        for r in requests {
            tx.try_send(r).unwrap();
        }
        drop(tx);
        let (ptx, _prx) = watch::channel(progress_of(&w));
        let end = run(w, rx, &ptx, max_unflushed_bytes).unwrap();
        let syncs = fs
            .ops()
            .into_iter()
            .filter(|op| matches!(op, FsOp::SyncData(_)))
            .collect();
        (syncs, end)
    }

    #[test]
    fn fsyncs_are_batched_until_the_queue_drains() {
        let (syncs, end) = run_queued(writes(0, 600_000, 10_000), u64::MAX);
        assert_eq!(end, Lsn(600_000));
        assert_eq!(
            syncs.len(),
            1,
            "one fsync for sixty queued messages: {syncs:?}"
        );
    }

    #[test]
    fn a_queue_that_never_drains_still_flushes_regularly() {
        let (syncs, _) = run_queued(writes(0, 600_000, 10_000), 100_000);
        assert!(syncs.len() >= 5, "{syncs:?}");
    }

    #[test]
    fn an_explicit_flush_request_flushes_at_once() {
        let mut requests = writes(0, 300_000, 10_000);
        requests.insert(10, DiskRequest::Flush);
        let (syncs, _) = run_queued(requests, u64::MAX);
        assert_eq!(syncs.len(), 2, "{syncs:?}");
    }
}

//! The extraction feed: how archive bytes travel from the network task to the extractor thread.
//!
//! ```text
//!  network task ── Feed::{Begin, Data(batch), End, Finish} ──► bounded channel ──► extractor thread
//!  (Extraction::feed waits for room: backpressure)           (FEED_CHANNEL_CHUNKS)  FeedReader → ArchiveExtractor
//! ```
//!
//! [`Extraction`] is the thread as the network side sees it: it spawns it, feeds it, notices when
//! it failed early and collects its results. The thread reads each archive through a
//! [`FeedReader`], a blocking [`Read`] and [`ChunkRead`] over the channel that ends at the
//! archive's `End` marker, so the extractor writes files straight from the buffers the payloads
//! arrived in.
//!
//! [`ExtractionGate`] lets the owner of the target directories stop every extraction under it and
//! wait until nothing writes any more — before it removes what was written after a failure.
//! Dropping an [`Extraction`] mid-backup does the same.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AbortReason, BackupError};
use crate::extract::{ArchiveExtractor, ArchiveKind, ExtractError, ExtractObserver};
use crate::manifest::ChecksumCollector;
use crate::sync::WrittenPaths;
use crate::tar_stream::ChunkRead;

/// Items queued between the network task and the extractor thread: with data batches of at most
/// [`FEED_BATCH_BYTES`] (plus one message), this bounds the queue to about 4 MB while still
/// absorbing short stalls on either side.
pub const FEED_CHANNEL_CHUNKS: usize = 4;

/// Archive data is handed to the extractor thread once this many bytes of CopyData payloads have
/// arrived (or when the archive ends): PostgreSQL sends archive data in messages of 32 kB
/// (`SINK_BUFFER_LENGTH` in `basebackup.c`), and one channel item per message cost one thread
/// wake-up per message. Measured on PostgreSQL 15 with a 620 MB data directory, 256 kB batches
/// halved the process's context switches (docs/benchmarks.md, "Fixes").
pub const FEED_BATCH_BYTES: usize = 1024 * 1024;

/// How long dropping a running extraction waits for its thread to stop writing.
pub const EXTRACTOR_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lets the owner of the target directories stop an extraction and wait until its thread no longer
/// writes (before removing the directories after a failure). One gate serves one backup: once
/// aborted it stays aborted.
#[derive(Clone, Debug, Default)]
pub struct ExtractionGate(Arc<GateInner>);

#[derive(Debug, Default)]
struct GateInner {
    aborted: AtomicBool,
    active: Mutex<usize>,
    idle: Condvar,
    /// Senders that can wake an extractor blocked waiting for data.
    wake: Mutex<Vec<mpsc::Sender<Feed>>>,
}

impl ExtractionGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every extraction under this gate fail at its next read (it writes nothing more).
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        let wake = match self.0.wake.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for tx in wake {
            // A full channel means the extractor is not blocked: it sees the flag on its next read.
            let _ = tx.try_send(Feed::Abort);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Waits until no extraction thread runs under this gate; false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut active = match self.0.active.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        while *active > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            active = match self.0.idle.wait_timeout(active, deadline - now) {
                Ok((a, _)) => a,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// [`abort`](Self::abort), then [`wait_idle`](Self::wait_idle).
    pub fn abort_and_wait(&self, timeout: Duration) -> bool {
        self.abort();
        self.wait_idle(timeout)
    }

    fn enter(&self) -> ActiveWriter {
        match self.0.active.lock() {
            Ok(mut a) => *a += 1,
            Err(p) => *p.into_inner() += 1,
        }
        ActiveWriter(self.clone())
    }

    fn register_wake(&self, tx: mpsc::Sender<Feed>) {
        if let Ok(mut w) = self.0.wake.lock() {
            w.push(tx);
        }
        // Aborted before the extractor even started: make sure it stops at once.
        if self.is_aborted() {
            self.abort();
        }
    }

    fn clear_wake(&self) {
        if let Ok(mut w) = self.0.wake.lock() {
            w.clear();
        }
    }
}

/// Counts one running extractor; dropped (also when the thread unwinds) when it stops.
struct ActiveWriter(ExtractionGate);

impl Drop for ActiveWriter {
    fn drop(&mut self) {
        let inner = &(self.0).0;
        match inner.active.lock() {
            Ok(mut a) => *a = a.saturating_sub(1),
            Err(p) => {
                let mut a = p.into_inner();
                *a = a.saturating_sub(1);
            }
        }
        inner.idle.notify_all();
    }
}

/// Where the archives of a `BASE_BACKUP` go, one after the other, on the extraction thread:
/// [`ArchiveExtractor`] unpacks them into directories; a sink may as well store the tar streams
/// themselves (`walrelay backup`). Each call must read `reader` to its end (the archive's end
/// marker) and show every regular file, as the backup manifest names it, to `observer`.
pub trait ArchiveSink: Send {
    fn archive(
        &mut self,
        kind: ArchiveKind,
        reader: &mut dyn ChunkRead,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(), ExtractError>;

    /// Every archive was taken: what was written, for [`WrittenPaths::sync_all`].
    fn finish(self: Box<Self>) -> Result<WrittenPaths, ExtractError>;
}

impl ArchiveSink for ArchiveExtractor {
    fn archive(
        &mut self,
        kind: ArchiveKind,
        reader: &mut dyn ChunkRead,
        observer: &mut dyn ExtractObserver,
    ) -> Result<(), ExtractError> {
        self.extract_chunks(kind, reader, observer).map(|_| ())
    }

    fn finish(self: Box<Self>) -> Result<WrittenPaths, ExtractError> {
        Ok(self.into_written())
    }
}

/// What the network task sends the extractor thread.
#[derive(Debug)]
pub(crate) enum Feed {
    /// The next archive starts.
    Begin(ArchiveKind),
    /// Bytes of the current archive, in order (CopyData payloads as they arrived).
    Data(Vec<Bytes>),
    /// The current archive's bytes are complete.
    End,
    /// No more archives: hand back the results.
    Finish,
    /// Stop at once (sent by [`ExtractionGate::abort`]).
    Abort,
}

/// What the extractor thread hands back.
pub(crate) struct ExtractOutcome {
    pub(crate) written: WrittenPaths,
    pub(crate) collector: Option<ChecksumCollector>,
}

/// The extractor thread as seen from the network task.
pub(crate) struct Extraction {
    tx: Option<mpsc::Sender<Feed>>,
    done: Option<oneshot::Receiver<Result<ExtractOutcome, BackupError>>>,
    gate: ExtractionGate,
    /// `Finish` was sent: the thread's result is now expected, and no longer a failure.
    finishing: bool,
}

impl Extraction {
    pub(crate) fn spawn(
        extractor: Box<dyn ArchiveSink>,
        collector: Option<ChecksumCollector>,
        gate: ExtractionGate,
    ) -> Extraction {
        let (tx, rx) = mpsc::channel(FEED_CHANNEL_CHUNKS);
        let (done_tx, done_rx) = oneshot::channel();
        // Counted before the thread exists, so that a wait_idle() right after sees it.
        let active = gate.enter();
        gate.register_wake(tx.clone());
        let thread_gate = gate.clone();
        tokio::task::spawn_blocking(move || {
            let _active = active;
            let result = extract_all(rx, extractor, collector, &thread_gate);
            let _ = done_tx.send(result);
        });
        Extraction {
            tx: Some(tx),
            done: Some(done_rx),
            gate,
            finishing: false,
        }
    }

    /// Sends one item, waiting for room (this is the backpressure), unless aborted or the
    /// extractor failed.
    pub(crate) async fn feed<A: Future<Output = AbortReason>>(
        &mut self,
        item: Feed,
        abort: &mut std::pin::Pin<&mut A>,
    ) -> Result<(), BackupError> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(BackupError::ExtractorFailed);
        };
        let finish = matches!(item, Feed::Finish);
        let sent = tokio::select! {
            biased;
            reason = abort.as_mut() => return Err(BackupError::Aborted(reason)),
            r = tx.send(item) => r,
        };
        if sent.is_ok() {
            self.finishing |= finish;
            return Ok(());
        }
        // The thread stopped reading: it failed. Its result says why.
        self.tx = None;
        match self.done.take() {
            Some(done) => match done.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(BackupError::protocol(
                    "the extractor finished before all archives were sent",
                )),
                Err(_) => Err(BackupError::ExtractorFailed),
            },
            None => Err(BackupError::ExtractorFailed),
        }
    }

    /// Resolves only if the extractor stopped on its own (always an error before `Finish`).
    /// Cancellation-safe.
    pub(crate) async fn failed_early(&mut self) -> BackupError {
        let Some(done) = self.done.as_mut().filter(|_| !self.finishing) else {
            return std::future::pending().await;
        };
        let result = done.await;
        self.done = None;
        self.tx = None;
        match result {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => BackupError::protocol("the extractor finished before it was told to"),
            Err(_) => BackupError::ExtractorFailed,
        }
    }

    /// The extractor's results after `Finish`.
    pub(crate) async fn outcome<A: Future<Output = AbortReason>>(
        &mut self,
        abort: &mut std::pin::Pin<&mut A>,
    ) -> Result<ExtractOutcome, BackupError> {
        let Some(done) = self.done.as_mut() else {
            return Err(BackupError::ExtractorFailed);
        };
        let result = tokio::select! {
            biased;
            reason = abort.as_mut() => return Err(BackupError::Aborted(reason)),
            r = done => r,
        };
        self.done = None;
        self.tx = None;
        self.gate.clear_wake();
        match result {
            Ok(r) => r,
            Err(_) => Err(BackupError::ExtractorFailed),
        }
    }
}

impl Drop for Extraction {
    fn drop(&mut self) {
        if self.done.is_none() && self.tx.is_none() {
            return; // finished (or failed) and collected
        }
        // Dropped mid-backup (error, abort, or the future itself was dropped): stop the thread
        // and wait until it no longer writes, so the caller may remove what it wrote.
        self.tx = None;
        if !self.gate.abort_and_wait(EXTRACTOR_STOP_TIMEOUT) {
            tracing::warn!("the extraction thread did not stop in time");
        }
    }
}

/// The extractor thread: archives one after the other, as the feed announces them.
fn extract_all(
    mut rx: mpsc::Receiver<Feed>,
    mut extractor: Box<dyn ArchiveSink>,
    mut collector: Option<ChecksumCollector>,
    gate: &ExtractionGate,
) -> Result<ExtractOutcome, BackupError> {
    loop {
        if gate.is_aborted() {
            return Err(aborted_by_gate());
        }
        match rx.blocking_recv() {
            Some(Feed::Begin(kind)) => {
                let mut reader = FeedReader::new(&mut rx, gate);
                match collector.as_mut() {
                    Some(c) => extractor.archive(kind, &mut reader, c),
                    None => extractor.archive(kind, &mut reader, &mut ()),
                }
                .map_err(|e| {
                    if gate.is_aborted() {
                        aborted_by_gate()
                    } else {
                        BackupError::Extract(e)
                    }
                })?;
                reader.expect_end(kind)?;
            }
            Some(Feed::Finish) => {
                return Ok(ExtractOutcome {
                    written: extractor.finish().map_err(BackupError::Extract)?,
                    collector,
                })
            }
            Some(Feed::Abort) | None => return Err(aborted_by_gate()),
            Some(Feed::Data(_) | Feed::End) => {
                return Err(BackupError::protocol("archive data outside an archive"))
            }
        }
    }
}

fn aborted_by_gate() -> BackupError {
    BackupError::Aborted("the extraction was stopped".into())
}

/// A blocking [`Read`] over the feed for one archive: EOF at [`Feed::End`].
struct FeedReader<'a> {
    rx: &'a mut mpsc::Receiver<Feed>,
    /// Received, not yet read; never holds an empty `Bytes`.
    pending: VecDeque<Bytes>,
    ended: bool,
    gate: &'a ExtractionGate,
}

impl<'a> FeedReader<'a> {
    /// A reader for the archive whose `Begin` was just taken from `rx`.
    fn new(rx: &'a mut mpsc::Receiver<Feed>, gate: &'a ExtractionGate) -> Self {
        FeedReader {
            rx,
            pending: VecDeque::new(),
            ended: false,
            gate,
        }
    }

    /// After the extractor saw the end of the archive, nothing but the end may follow.
    fn expect_end(&mut self, kind: ArchiveKind) -> Result<(), BackupError> {
        let mut probe = [0u8; 1];
        match self.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(BackupError::protocol(format!(
                "data after the end of {}",
                kind.archive_name()
            ))),
            Err(_) => Err(aborted_by_gate()),
        }
    }
}

/// What the extractor's reads return once the backup is aborted.
fn feed_aborted() -> io::Error {
    io::Error::other("base backup aborted")
}

impl FeedReader<'_> {
    /// Waits for the next batch (or the end of the archive) when nothing is pending.
    fn refill(&mut self) -> io::Result<()> {
        match self.rx.blocking_recv() {
            Some(Feed::Data(batch)) => self
                .pending
                .extend(batch.into_iter().filter(|b| !b.is_empty())),
            Some(Feed::End) => self.ended = true,
            Some(Feed::Abort) | None => return Err(feed_aborted()),
            Some(Feed::Begin(_) | Feed::Finish) => {
                return Err(io::Error::other(
                    "the archive stream ended without its end marker",
                ))
            }
        }
        Ok(())
    }
}

impl Read for FeedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.gate.is_aborted() {
                return Err(feed_aborted());
            }
            // Fill as much of `buf` as is here: fewer, larger reads for the tar parser.
            let mut filled = 0;
            while filled < buf.len() {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                let n = (buf.len() - filled).min(front.len());
                buf[filled..filled + n].copy_from_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                filled += n;
            }
            if filled > 0 {
                return Ok(filled);
            }
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            self.refill()?;
        }
    }
}

impl ChunkRead for FeedReader<'_> {
    /// The payloads as they came off the network (or the first `max` bytes of one).
    fn read_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        loop {
            if self.gate.is_aborted() {
                return Err(feed_aborted());
            }
            if let Some(front) = self.pending.front_mut() {
                if front.len() > max {
                    return Ok(front.split_to(max));
                }
                if let Some(chunk) = self.pending.pop_front() {
                    return Ok(chunk);
                }
            }
            if self.ended || max == 0 {
                return Ok(Bytes::new());
            }
            self.refill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_counts_and_wakes() {
        let gate = ExtractionGate::new();
        assert!(gate.wait_idle(Duration::from_millis(1)));
        let w = gate.enter();
        assert!(!gate.wait_idle(Duration::from_millis(20)));
        let g2 = gate.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(w);
            g2.is_aborted()
        });
        gate.abort();
        assert!(gate.wait_idle(Duration::from_secs(5)));
        assert!(t.join().unwrap());
    }

    #[test]
    fn feed_reader_stops_at_end_and_on_abort() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        rt.block_on(async {
            tx.send(Feed::Data(vec![Bytes::from_static(b"hello ")]))
                .await
                .unwrap();
            tx.send(Feed::Data(vec![Bytes::from_static(b"world")]))
                .await
                .unwrap();
            tx.send(Feed::End).await.unwrap();
        });
        let gate = ExtractionGate::new();
        let mut r = FeedReader::new(&mut rx, &gate);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        assert!(r.expect_end(ArchiveKind::Base).is_ok());
        drop(tx);
        let mut r = FeedReader::new(&mut rx, &gate);
        // sender gone without End: an error, never a clean end of archive
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    /// Batches (with empty payloads among them) read back as the same byte stream, whatever the
    /// reader's buffer size: reads fill across payload boundaries and never split the order.
    #[test]
    fn feed_reader_reads_batches_in_order_across_payloads() {
        let payloads: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7) * 3]))
            .collect();
        let expected: Vec<u8> = payloads.iter().flat_map(|b| b.iter().copied()).collect();
        for read_size in [1, 5, 64, 4096] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (tx, mut rx) = mpsc::channel(64);
            rt.block_on(async {
                for chunk in payloads.chunks(6) {
                    tx.send(Feed::Data(chunk.to_vec())).await.unwrap();
                }
                tx.send(Feed::Data(Vec::new())).await.unwrap();
                tx.send(Feed::End).await.unwrap();
            });
            let gate = ExtractionGate::new();
            let mut r = FeedReader::new(&mut rx, &gate);
            let mut got = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, expected, "read size {read_size}");
            assert!(r.pending.is_empty());
        }
    }
}

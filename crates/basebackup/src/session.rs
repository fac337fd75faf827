//! The network side of receiving the archives: one [`Session`] per `receive`, reading messages
//! while watching the abort signal and the extractor thread, and handing archive data to the
//! [extraction feed](crate::feed) in batches.
//!
//! Both message flows are here: PostgreSQL 15+'s single COPY of `'n'`/`'d'`/`'p'`/`'m'`
//! messages, checked against the tablespace header ([`Session::archive_stream`]), and one COPY
//! per tablespace plus one for the manifest before 15 ([`Session::tablespace_copies`]). The
//! manifest is kept in memory, up to [`MAX_MANIFEST_BYTES`].

use std::collections::HashSet;
use std::future::Future;

use bytes::Bytes;
use walrelay_client::Connection;
use walrelay_protocol::base_backup::TablespaceHeader;
use walrelay_protocol::{BackendMessage, BaseBackupMessage, ErrorFields};

use crate::error::{classify_server_error, AbortReason, BackupError, BackupStage};
use crate::extract::ArchiveKind;
use crate::feed::{Extraction, Feed, FEED_BATCH_BYTES};
use crate::progress::BackupProgress;
use crate::result_set::{RowStep, Rows};

/// The largest manifest accepted. A manifest lists each file in about 150 bytes; this is room for
/// millions of files while refusing a server that never stops sending one.
pub const MAX_MANIFEST_BYTES: usize = 1 << 30;

/// The network side of one `receive`.
pub(crate) struct Session<'a, 'c, A: Future<Output = AbortReason>> {
    pub(crate) conn: &'c mut Connection,
    pub(crate) extraction: Extraction,
    pub(crate) abort: std::pin::Pin<&'a mut A>,
    progress: &'a BackupProgress,
    /// CopyData bytes received (archives and manifest).
    pub(crate) received: u64,
    /// Archive data not yet handed to the extractor (see [`FEED_BATCH_BYTES`]).
    batch: Vec<Bytes>,
    batch_bytes: usize,
}

impl<'a, 'c, A: Future<Output = AbortReason>> Session<'a, 'c, A> {
    pub(crate) fn new(
        conn: &'c mut Connection,
        extraction: Extraction,
        abort: std::pin::Pin<&'a mut A>,
        progress: &'a BackupProgress,
    ) -> Self {
        Session {
            conn,
            extraction,
            abort,
            progress,
            received: 0,
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }
}

impl<A: Future<Output = AbortReason>> Session<'_, '_, A> {
    /// The next message, unless the abort signal fires or the extractor failed first.
    async fn next(&mut self, stage: BackupStage) -> Result<BackendMessage, BackupError> {
        let Session {
            conn,
            extraction,
            abort,
            ..
        } = self;
        tokio::select! {
            biased;
            reason = abort.as_mut() => Err(BackupError::Aborted(reason)),
            failure = extraction.failed_early() => Err(failure),
            msg = conn.read_message() => msg.map_err(|source| BackupError::Connection { stage, source }),
        }
    }

    /// Reads a result set (RowDescription, DataRow…, CommandComplete).
    pub(crate) async fn result_set(&mut self, stage: BackupStage) -> Result<Rows, BackupError> {
        let mut rows = Rows::default();
        loop {
            let msg = self.next(stage).await?;
            match rows.accept(msg, stage)? {
                RowStep::More => {}
                RowStep::Done => return Ok(rows),
                RowStep::Failed(e) => return Err(self.server_failure(stage, e)),
            }
        }
    }

    fn server_failure(&mut self, stage: BackupStage, e: ErrorFields) -> BackupError {
        classify_server_error(stage, e, self.conn.take_notices())
    }

    /// Hands a marker to the extractor, after the archive data queued before it.
    pub(crate) async fn send(&mut self, item: Feed) -> Result<(), BackupError> {
        self.flush_data().await?;
        self.extraction.feed(item, &mut self.abort).await
    }

    /// Queues archive data of the current archive; it goes to the extractor in batches of about
    /// [`FEED_BATCH_BYTES`], and at the latest with the next marker ([`send`](Self::send)).
    async fn send_data(&mut self, data: Bytes) -> Result<(), BackupError> {
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch_bytes >= FEED_BATCH_BYTES {
            self.flush_data().await?;
        }
        Ok(())
    }

    async fn flush_data(&mut self) -> Result<(), BackupError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.extraction
            .feed(Feed::Data(batch), &mut self.abort)
            .await
    }

    async fn expect_copy_out(&mut self, what: &str) -> Result<(), BackupError> {
        match self.next(BackupStage::Transfer).await? {
            BackendMessage::CopyOutResponse(_) => Ok(()),
            BackendMessage::ErrorResponse(e) => Err(self.server_failure(BackupStage::Transfer, e)),
            other => Err(BackupError::protocol(format!(
                "expected the COPY of {what}, got {}",
                walrelay_client::message_name(&other)
            ))),
        }
    }

    /// PostgreSQL 15+: one COPY carrying every archive, then the manifest.
    pub(crate) async fn archive_stream(
        &mut self,
        header: &[TablespaceHeader],
    ) -> Result<Option<Vec<u8>>, BackupError> {
        self.expect_copy_out("the archives").await?;
        let mut current: Option<ArchiveKind> = None;
        let mut seen: HashSet<ArchiveKind> = HashSet::new();
        let mut manifest: Option<Vec<u8>> = None;
        loop {
            match self.next(BackupStage::Transfer).await? {
                BackendMessage::CopyData(payload) => {
                    self.count_received(payload.len());
                    let msg = BaseBackupMessage::parse(&payload)
                        .map_err(|e| BackupError::protocol(e.to_string()))?;
                    match msg {
                        BaseBackupMessage::NewArchive {
                            archive_name,
                            tablespace_location,
                        } => {
                            if manifest.is_some() {
                                return Err(BackupError::protocol(
                                    "a new archive after the manifest (archives must precede the manifest)",
                                ));
                            }
                            let kind = archive_for(header, &archive_name, &tablespace_location)?;
                            if !seen.insert(kind) {
                                return Err(BackupError::protocol(format!(
                                    "archive \"{archive_name}\" sent twice"
                                )));
                            }
                            if current.take().is_some() {
                                self.send(Feed::End).await?;
                            }
                            self.send(Feed::Begin(kind)).await?;
                            current = Some(kind);
                        }
                        BaseBackupMessage::Data(data) => {
                            if let Some(m) = manifest.as_mut() {
                                append_manifest(m, &data)?;
                            } else if current.is_some() {
                                if !data.is_empty() {
                                    self.send_data(data).await?;
                                }
                            } else {
                                return Err(BackupError::protocol(
                                    "archive data before any archive began",
                                ));
                            }
                        }
                        BaseBackupMessage::Progress(done) => self.progress.set_done(done),
                        BaseBackupMessage::ManifestFollows => {
                            if manifest.is_some() {
                                return Err(BackupError::protocol("two manifests"));
                            }
                            if current.take().is_some() {
                                self.send(Feed::End).await?;
                            }
                            manifest = Some(Vec::new());
                        }
                    }
                }
                BackendMessage::CopyDone => {
                    if current.take().is_some() {
                        self.send(Feed::End).await?;
                    }
                    break;
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(self.server_failure(BackupStage::Transfer, e))
                }
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} inside the archive stream",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
        check_all_archives_seen(header, &seen)?;
        Ok(manifest)
    }

    /// Before PostgreSQL 15: one COPY per header row in order, then one for the manifest.
    pub(crate) async fn tablespace_copies(
        &mut self,
        header: &[TablespaceHeader],
        manifest_expected: bool,
    ) -> Result<Option<Vec<u8>>, BackupError> {
        for row in header {
            let kind = row.archive_kind();
            self.expect_copy_out(&kind.archive_name()).await?;
            self.send(Feed::Begin(kind)).await?;
            loop {
                match self.next(BackupStage::Transfer).await? {
                    BackendMessage::CopyData(data) => {
                        self.count_received(data.len());
                        self.progress.add_done(data.len() as u64);
                        if !data.is_empty() {
                            self.send_data(data).await?;
                        }
                    }
                    BackendMessage::CopyDone => break,
                    BackendMessage::ErrorResponse(e) => {
                        return Err(self.server_failure(BackupStage::Transfer, e))
                    }
                    other => {
                        return Err(BackupError::protocol(format!(
                            "unexpected {} inside the COPY of {}",
                            walrelay_client::message_name(&other),
                            kind.archive_name()
                        )))
                    }
                }
            }
            self.send(Feed::End).await?;
        }
        if !manifest_expected {
            return Ok(None);
        }
        self.expect_copy_out("the backup manifest").await?;
        let mut manifest = Vec::new();
        loop {
            match self.next(BackupStage::Transfer).await? {
                BackendMessage::CopyData(data) => {
                    self.count_received(data.len());
                    append_manifest(&mut manifest, &data)?;
                }
                BackendMessage::CopyDone => return Ok(Some(manifest)),
                BackendMessage::ErrorResponse(e) => {
                    return Err(self.server_failure(BackupStage::Transfer, e))
                }
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} inside the COPY of the backup manifest",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
    }

    /// After the end position: CommandComplete (or the error that replaces it), ReadyForQuery.
    pub(crate) async fn final_status(&mut self) -> Result<(), BackupError> {
        let mut error: Option<ErrorFields> = None;
        loop {
            match self.next(BackupStage::End).await? {
                BackendMessage::CommandComplete { .. } => {}
                BackendMessage::ErrorResponse(e) => {
                    error.get_or_insert(e);
                }
                BackendMessage::ReadyForQuery { .. } => break,
                other => {
                    return Err(BackupError::protocol(format!(
                        "unexpected {} after the end position",
                        walrelay_client::message_name(&other)
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(self.server_failure(BackupStage::End, e)),
            None => Ok(()),
        }
    }

    fn count_received(&mut self, n: usize) {
        self.received += n as u64;
        self.progress.add_received(n as u64);
    }
}

/// Matches a PostgreSQL 15+ `'n'` message with the header: the name must be `base.tar` with an
/// empty location, or `<oid>.tar` for an announced tablespace at the announced location.
fn archive_for(
    header: &[TablespaceHeader],
    name: &str,
    location: &str,
) -> Result<ArchiveKind, BackupError> {
    let kind = ArchiveKind::from_archive_name(name).ok_or_else(|| {
        BackupError::protocol(format!(
            "invalid archive name \"{name}\" (expected base.tar or <oid>.tar)"
        ))
    })?;
    let row = header
        .iter()
        .find(|h| h.archive_kind() == kind)
        .ok_or_else(|| {
            BackupError::protocol(format!(
                "archive \"{name}\" is for a tablespace missing from the tablespace header"
            ))
        })?;
    let announced = row.location.as_deref().unwrap_or("");
    if announced != location {
        return Err(BackupError::protocol(format!(
            "archive \"{name}\" names location \"{location}\" but the header said \"{announced}\""
        )));
    }
    Ok(kind)
}

fn check_all_archives_seen(
    header: &[TablespaceHeader],
    seen: &HashSet<ArchiveKind>,
) -> Result<(), BackupError> {
    let missing: Vec<String> = header
        .iter()
        .map(TablespaceHeader::archive_kind)
        .filter(|k| !seen.contains(k))
        .map(ArchiveKind::archive_name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BackupError::protocol(format!(
            "the archive stream ended without {}",
            missing.join(", ")
        )))
    }
}

fn append_manifest(manifest: &mut Vec<u8>, data: &[u8]) -> Result<(), BackupError> {
    if manifest.len().saturating_add(data.len()) > MAX_MANIFEST_BYTES {
        return Err(BackupError::ManifestTooLarge);
    }
    manifest.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_match_header() {
        let header = vec![
            TablespaceHeader {
                oid: Some(16384),
                location: Some("/srv/ts".into()),
                size_kb: None,
            },
            TablespaceHeader {
                oid: None,
                location: None,
                size_kb: None,
            },
        ];
        assert_eq!(
            archive_for(&header, "base.tar", "").unwrap(),
            ArchiveKind::Base
        );
        assert_eq!(
            archive_for(&header, "16384.tar", "/srv/ts").unwrap(),
            ArchiveKind::Tablespace(16384)
        );
        assert!(archive_for(&header, "16384.tar", "/elsewhere").is_err());
        assert!(archive_for(&header, "16385.tar", "/srv/ts").is_err());
        assert!(archive_for(&header, "base.tar", "/srv/ts").is_err());
        assert!(archive_for(&header, "../x.tar", "").is_err());
        let mut seen = HashSet::new();
        seen.insert(ArchiveKind::Base);
        assert!(check_all_archives_seen(&header, &seen).is_err());
        seen.insert(ArchiveKind::Tablespace(16384));
        assert!(check_all_archives_seen(&header, &seen).is_ok());
    }

    #[test]
    fn manifest_cap() {
        let mut m = vec![0u8; MAX_MANIFEST_BYTES - 1];
        assert!(append_manifest(&mut m, b"x").is_ok());
        assert!(matches!(
            append_manifest(&mut m, b"y"),
            Err(BackupError::ManifestTooLarge)
        ));
    }
}

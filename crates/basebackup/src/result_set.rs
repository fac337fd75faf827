//! Reading the result sets of `BASE_BACKUP` (start position, tablespace header, end position)
//! message by message; what their rows mean is parsed by
//! [`walrelay_protocol::base_backup`].

use walrelay_client::Connection;
use walrelay_protocol::base_backup::{
    parse_backup_position, parse_tablespace_header, BackupPosition, BackupResultError,
    PositionKind, ResultRows, TablespaceHeader,
};
use walrelay_protocol::{BackendMessage, ErrorFields};

use crate::error::{classify_server_error, BackupError, BackupStage};

/// A result set being read, message by message.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    set: ResultRows,
    /// Whether the RowDescription has arrived.
    described: bool,
}

/// Where a result set stands after one more message.
pub(crate) enum RowStep {
    More,
    Done,
    /// The server reported an error instead of (the rest of) the result.
    Failed(ErrorFields),
}

impl Rows {
    /// Takes the next message of a result set: RowDescription, DataRow…, CommandComplete.
    pub(crate) fn accept(
        &mut self,
        msg: BackendMessage,
        stage: BackupStage,
    ) -> Result<RowStep, BackupError> {
        match msg {
            BackendMessage::RowDescription(fields) if !self.described => {
                self.set.columns = fields.into_iter().map(|f| f.name).collect();
                self.described = true;
            }
            BackendMessage::DataRow(values) if self.described => {
                if values.len() != self.set.columns.len() {
                    return Err(BackupError::protocol(
                        "a result row has a different number of columns than its description",
                    ));
                }
                self.set.rows.push(values);
            }
            BackendMessage::CommandComplete { .. } if self.described => return Ok(RowStep::Done),
            BackendMessage::ErrorResponse(e) => return Ok(RowStep::Failed(e)),
            other => {
                return Err(BackupError::protocol(format!(
                    "unexpected {} while reading a result set ({stage})",
                    walrelay_client::connection::message_name(&other)
                )))
            }
        }
        Ok(RowStep::More)
    }

    /// The start or end position this result set carries.
    pub(crate) fn position(&self, which: PositionKind) -> Result<BackupPosition, BackupError> {
        parse_backup_position(&self.set, which).map_err(malformed)
    }

    /// The tablespace header this result set carries.
    pub(crate) fn tablespace_header(&self) -> Result<Vec<TablespaceHeader>, BackupError> {
        parse_tablespace_header(&self.set).map_err(malformed)
    }
}

/// A result set no PostgreSQL server would send is a protocol violation.
fn malformed(e: BackupResultError) -> BackupError {
    BackupError::protocol(e.to_string())
}

/// Reads a whole result set straight off the connection (before the extraction runs). On a server
/// error, waits for ReadyForQuery so that the connection is usable again.
pub(crate) async fn read_result_set(
    conn: &mut Connection,
    stage: BackupStage,
) -> Result<Rows, BackupError> {
    let mut rows = Rows::default();
    loop {
        let msg = conn
            .read_message()
            .await
            .map_err(|source| BackupError::Connection { stage, source })?;
        match rows.accept(msg, stage)? {
            RowStep::More => {}
            RowStep::Done => return Ok(rows),
            RowStep::Failed(e) => {
                // The command failed as a whole: the server sends ReadyForQuery next.
                let notices = conn.take_notices();
                let _ = conn.drain_until_ready().await;
                return Err(classify_server_error(stage, e, notices));
            }
        }
    }
}

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
                    walrelay_client::message_name(&other)
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use walrelay_protocol::message::FieldDescription;

    use super::*;

    fn description(columns: &[&str]) -> BackendMessage {
        BackendMessage::RowDescription(columns.iter().map(|c| FieldDescription::text(c)).collect())
    }

    fn row(values: &[Option<&str>]) -> BackendMessage {
        BackendMessage::DataRow(
            values
                .iter()
                .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
        )
    }

    fn complete() -> BackendMessage {
        BackendMessage::CommandComplete {
            tag: "SELECT".into(),
        }
    }

    /// Feeds messages until the result set is done; the last step.
    fn read(msgs: Vec<BackendMessage>) -> Result<(Rows, bool), BackupError> {
        let mut rows = Rows::default();
        for m in msgs {
            match rows.accept(m, BackupStage::Start)? {
                RowStep::More => {}
                RowStep::Done => return Ok((rows, true)),
                RowStep::Failed(_) => return Ok((rows, false)),
            }
        }
        Ok((rows, false))
    }

    /// A complete position result set with one row of (`recptr`, `tli`).
    fn position_rows(recptr: &str, tli: &str) -> Rows {
        let (rows, done) = read(vec![
            description(&["recptr", "tli"]),
            row(&[Some(recptr), Some(tli)]),
            complete(),
        ])
        .unwrap();
        assert!(done);
        rows
    }

    #[test]
    fn a_position_result_set_message_by_message() {
        let p = position_rows("0/2000028", "1")
            .position(PositionKind::Start)
            .unwrap();
        assert_eq!(p.to_string(), "0/2000028 on timeline 1");
    }

    #[test]
    fn out_of_order_or_malformed_messages_are_protocol_violations() {
        for msgs in [
            // a row before its description
            vec![row(&[None])],
            // CommandComplete before any description
            vec![complete()],
            // two descriptions
            vec![description(&["a"]), description(&["a"])],
            // a row with a different number of columns
            vec![description(&["a", "b"]), row(&[Some("x")])],
            // something else entirely
            vec![description(&["a"]), BackendMessage::CopyDone],
        ] {
            assert!(
                matches!(read(msgs), Err(BackupError::Protocol(_))),
                "accepted"
            );
        }
    }

    #[test]
    fn a_server_error_ends_the_result_set() {
        let e = ErrorFields {
            severity: "ERROR".into(),
            code: "55000".into(),
            message: "WAL level not sufficient".into(),
            detail: None,
            hint: None,
        };
        let (_, done) = read(vec![
            description(&["recptr", "tli"]),
            BackendMessage::ErrorResponse(e),
        ])
        .unwrap();
        assert!(!done);
    }

    #[test]
    fn malformed_rows_are_named_in_the_error() {
        let e = position_rows("nope", "1")
            .position(PositionKind::End)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol violation during base backup: invalid end position; the server is not behaving like PostgreSQL"
        );
        let (rows, _) = read(vec![description(&["spcoid"]), complete()]).unwrap();
        assert!(matches!(
            rows.tablespace_header(),
            Err(BackupError::Protocol(m)) if m == "the tablespace header has 1 columns, expected at least 2"
        ));
    }
}

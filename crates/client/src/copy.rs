//! `COPY … TO STDOUT` and `COPY … FROM STDIN` as streams of CopyData payloads.
//!
//! Out: [`Connection::copy_out`] starts the COPY, [`Connection::copy_out_next`] returns one payload
//! at a time (a row, in text format) until the end. In: [`Connection::copy_in`] starts it,
//! [`Connection::copy_in_send`] queues data (sent once 256 kB are queued, so memory stays bounded
//! and backpressure reaches the caller), [`Connection::copy_in_finish`] ends it and returns the row
//! count. Payloads may be cut anywhere: COPY FROM does not care where CopyData messages end.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-COPY>.

use bytes::Bytes;
use postgres_protocol::message::frontend;
use walrelay_protocol::message::BackendMessage;

use crate::connection::{message_name, Connection};
use crate::error::{ClientError, Result, ServerError};
use crate::sql::rows_affected;

/// Queued COPY data sent at once rather than kept.
const COPY_SEND_THRESHOLD: usize = 256 * 1024;

impl Connection {
    /// Sends `sql` (a `COPY … TO STDOUT`) and waits for the CopyOutResponse.
    pub async fn copy_out(&mut self, sql: &str) -> Result<()> {
        self.start_copy(sql, false).await
    }

    /// The next payload of a COPY OUT; `None` once the COPY ended and the session is ready again.
    /// Cancellation-safe (reads with [`Connection::read_message`]).
    pub async fn copy_out_next(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.read_message().await? {
                BackendMessage::CopyData(b) => return Ok(Some(b)),
                BackendMessage::CopyDone | BackendMessage::CommandComplete { .. } => {}
                BackendMessage::ReadyForQuery { .. } => return Ok(None),
                BackendMessage::ErrorResponse(e) => {
                    self.drain_until_ready().await?;
                    return Err(ClientError::server(e));
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} during COPY TO STDOUT",
                        message_name(&other)
                    )))
                }
            }
        }
    }

    /// Sends `sql` (a `COPY … FROM STDIN`) and waits for the CopyInResponse.
    pub async fn copy_in(&mut self, sql: &str) -> Result<()> {
        self.start_copy(sql, true).await
    }

    /// Queues COPY data; sends what is queued once it passes 256 kB.
    pub async fn copy_in_send(&mut self, data: &[u8]) -> Result<()> {
        self.queue_copy_data(data);
        if self.queued_bytes() >= COPY_SEND_THRESHOLD {
            self.flush().await?;
        }
        Ok(())
    }

    /// Ends a COPY IN and returns how many rows it stored. A server error (bad data, a
    /// constraint) is reported here: the server reads and drops data after one.
    pub async fn copy_in_finish(&mut self) -> Result<u64> {
        self.queue_copy_done();
        self.flush().await?;
        let mut tag = String::new();
        let mut error: Option<ServerError> = None;
        loop {
            match self.read_message().await? {
                BackendMessage::CommandComplete { tag: t } => tag = t,
                BackendMessage::ErrorResponse(e) => {
                    error.get_or_insert(ServerError { fields: e });
                }
                BackendMessage::ReadyForQuery { .. } => break,
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} at the end of COPY FROM STDIN",
                        message_name(&other)
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(ClientError::Server(Box::new(e))),
            None => Ok(rows_affected(&tag).unwrap_or(0)),
        }
    }

    /// Abandons a COPY IN: the server discards it and reports an error, which is expected and
    /// swallowed here.
    pub async fn copy_in_fail(&mut self, reason: &str) -> Result<()> {
        frontend::copy_fail(reason, self.write_buf_mut())
            .map_err(|e| ClientError::Config(format!("could not encode CopyFail: {e}")))?;
        self.flush().await?;
        self.drain_until_ready().await.map(|_| ())
    }

    /// Sends a COPY and waits for the server to start it (CopyInResponse or CopyOutResponse); a
    /// server error is returned once the session is ready again.
    async fn start_copy(&mut self, sql: &str, copy_in: bool) -> Result<()> {
        self.queue_query(sql)?;
        self.flush().await?;
        match self.read_message().await? {
            BackendMessage::CopyInResponse(_) if copy_in => Ok(()),
            BackendMessage::CopyOutResponse(_) if !copy_in => Ok(()),
            BackendMessage::ErrorResponse(e) => {
                self.drain_until_ready().await?;
                Err(ClientError::server(e))
            }
            other => Err(ClientError::Unexpected(format!(
                "unexpected {} in reply to {sql:?}",
                message_name(&other)
            ))),
        }
    }
}

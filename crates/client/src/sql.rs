//! SQL on an ordinary session beyond the simple query: the extended query protocol with text
//! parameters ([`Connection::query_params`], [`Connection::execute_params`]) and a [`Pipeline`] of
//! prepared statements that sends many executions before reading any answer — one round trip per
//! transaction instead of one per row, which is what applying a stream of changes needs.
//!
//! Parameters are sent in text form with unspecified types, so the server infers each one from where
//! it stands (`WHERE id = $1` takes `id`'s type) and parses it with that type's input function:
//! exactly what a text value from `pgoutput` or `COPY` needs, whatever the server's major.
//!
//! A replication connection refuses the extended protocol (08P01): use these on `ReplicationMode::Off`
//! sessions only.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>
//! ("Pipelining").

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use walrelay_protocol::message::BackendMessage;

use crate::connection::{message_name, Connection, QueryResult};
use crate::error::{ClientError, Result, ServerError};

/// Executions sent before the answers to them are read. Each answer is a few dozen bytes, so the
/// server never blocks on a full socket while we are still writing (which would deadlock both).
const MAX_UNREAD_EXECUTIONS: usize = 1024;
/// Queued bytes that are sent at once rather than kept (bounds the pipeline's memory).
const SEND_THRESHOLD: usize = 256 * 1024;

/// The row count at the end of a command tag (`UPDATE 3`, `INSERT 0 1`, `COPY 10`).
pub fn rows_affected(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next()?.parse().ok()
}

/// What a pipelined batch returned, in constant memory whatever its size: counts, and the rows of
/// the executions that returned any (text format, in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub executions: u64,
    /// UPDATE and DELETE commands that found no row.
    pub unmatched: u64,
    /// Rows affected, summed over every command that reports a count.
    pub rows_affected: u64,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

fn encode_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(format!("could not encode a statement: {e}"))
}

/// Queues Bind of the unnamed portal: text parameters (`None` is NULL), text results.
fn queue_bind<'p>(
    conn: &mut Connection,
    statement: &str,
    params: impl IntoIterator<Item = Option<&'p [u8]>>,
) -> Result<()> {
    frontend::bind(
        "",
        statement,
        Some(0),
        params,
        |v, buf| {
            Ok(match v {
                Some(bytes) => {
                    buf.put_slice(bytes);
                    IsNull::No
                }
                None => IsNull::Yes,
            })
        },
        None::<i16>,
        conn.write_buf_mut(),
    )
    .map_err(|_| {
        ClientError::Config("could not encode the parameters of a statement (too many?)".into())
    })
}

impl Connection {
    /// Runs one statement with text parameters (`$1`, `$2`, …; `None` is NULL) and returns its
    /// result. Catalog queries with user-supplied names use this: nothing is quoted by hand.
    pub async fn query_params(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
    ) -> Result<QueryResult> {
        frontend::parse("", sql, None, self.write_buf_mut()).map_err(encode_error)?;
        queue_bind(self, "", params.iter().map(|p| p.map(str::as_bytes)))?;
        let buf = self.write_buf_mut();
        frontend::describe(b'P', "", buf).map_err(encode_error)?;
        frontend::execute("", 0, buf).map_err(encode_error)?;
        frontend::sync(buf);
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error: Option<ServerError> = None;
        loop {
            match self.read_message().await? {
                BackendMessage::ParseComplete
                | BackendMessage::BindComplete
                | BackendMessage::NoData
                | BackendMessage::EmptyQueryResponse => {}
                BackendMessage::RowDescription(fields) => {
                    result.columns = fields.into_iter().map(|f| f.name).collect();
                }
                BackendMessage::DataRow(cols) => {
                    if cols.len() != result.columns.len() {
                        return Err(ClientError::Unexpected(
                            "DataRow column count differs from RowDescription".into(),
                        ));
                    }
                    result.rows.push(cols);
                }
                BackendMessage::CommandComplete { tag } => result.tag = tag,
                BackendMessage::ErrorResponse(e) => {
                    error.get_or_insert(ServerError { fields: e });
                }
                BackendMessage::ReadyForQuery { .. } => {
                    return match error {
                        Some(e) => Err(ClientError::Server(Box::new(e))),
                        None => Ok(result),
                    };
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} in reply to an extended query",
                        message_name(&other)
                    )))
                }
            }
        }
    }

    /// [`query_params`](Self::query_params) for a statement that returns no rows; the number of
    /// rows it affected (0 when the tag has none).
    pub async fn execute_params(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
        let r = self.query_params(sql, params).await?;
        Ok(rows_affected(&r.tag).unwrap_or(0))
    }

    /// Runs statements through the simple query protocol and drops their results (`BEGIN`,
    /// `SET …`, DDL).
    pub async fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.simple_query(sql).await.map(|_| ())
    }
}

/// An answer the pipeline waits for, in the order the server sends them.
#[derive(Debug)]
enum Due {
    /// ParseComplete of a named statement (cached once confirmed).
    Parse(String),
    Bind,
    Execute,
    Sync,
}

/// A session that executes prepared statements without waiting: each [`Pipeline::execute`] is
/// queued (Parse the first time a statement text is seen, then Bind and Execute), and
/// [`Pipeline::sync`] sends Sync and collects every answer. After a server error the server skips
/// everything up to the Sync, so the whole batch stands or falls together — in a transaction
/// block, the transaction is then failed and must be rolled back.
///
/// Memory stays bounded whatever the batch size: queued bytes are sent once they pass 256 kB, and
/// after 1024 unanswered executions the answers so far are read (a Flush asks the server for them).
pub struct Pipeline {
    conn: Connection,
    /// Statement text → name, for statements the server confirmed or will confirm.
    statements: HashMap<String, String>,
    next_statement: u64,
    due: VecDeque<Due>,
    unread_executions: usize,
    batch: Batch,
    error: Option<ServerError>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("conn", &self.conn)
            .field("statements", &self.statements.len())
            .field("due", &self.due.len())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(conn: Connection) -> Self {
        Pipeline {
            conn,
            statements: HashMap::new(),
            next_statement: 0,
            due: VecDeque::new(),
            unread_executions: 0,
            batch: Batch::default(),
            error: None,
        }
    }

    /// The connection, for simple queries between batches (nothing may be pending).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn into_inner(self) -> Connection {
        self.conn
    }

    /// Statements prepared on this session.
    pub fn prepared_statements(&self) -> usize {
        self.statements.len()
    }

    /// Queues one execution of `sql` with text parameters. Not cancellation-safe (a dropped call
    /// may leave part of a message queued): drop the whole session instead.
    pub async fn execute<'p>(
        &mut self,
        sql: &str,
        params: impl IntoIterator<Item = Option<&'p [u8]>>,
    ) -> Result<()> {
        if self.error.is_some() {
            // An answer read early (a long batch) was an error: the server skips everything up
            // to the Sync, so nothing is sent and nothing is awaited for this execution. `sync`
            // returns the error.
            return Ok(());
        }
        let name = match self.statements.get(sql) {
            Some(n) => n.clone(),
            None => {
                self.next_statement += 1;
                let name = format!("walrelay_{}", self.next_statement);
                frontend::parse(&name, sql, None, self.conn.write_buf_mut())
                    .map_err(encode_error)?;
                self.statements.insert(sql.to_string(), name.clone());
                self.due.push_back(Due::Parse(name.clone()));
                name
            }
        };
        queue_bind(&mut self.conn, &name, params)?;
        frontend::execute("", 0, self.conn.write_buf_mut()).map_err(encode_error)?;
        self.due.push_back(Due::Bind);
        self.due.push_back(Due::Execute);
        self.unread_executions += 1;
        if self.unread_executions >= MAX_UNREAD_EXECUTIONS {
            frontend::flush(self.conn.write_buf_mut());
            self.conn.flush().await?;
            self.read_answers(false).await?;
        } else if self.conn.queued_bytes() >= SEND_THRESHOLD {
            self.conn.flush().await?;
        }
        Ok(())
    }

    /// Sends Sync and waits for every answer: what the batch returned, or its first server error.
    pub async fn sync(&mut self) -> Result<Batch> {
        frontend::sync(self.conn.write_buf_mut());
        self.due.push_back(Due::Sync);
        self.conn.flush().await?;
        self.read_answers(true).await?;
        let batch = std::mem::take(&mut self.batch);
        match self.error.take() {
            Some(e) => Err(ClientError::Server(Box::new(e))),
            None => Ok(batch),
        }
    }

    /// Reads answers until the Sync is answered (`to_sync`), or until every execution sent so far
    /// is answered — or a server error says the rest will be skipped until the Sync.
    async fn read_answers(&mut self, to_sync: bool) -> Result<()> {
        loop {
            let done = if to_sync {
                self.due.is_empty()
            } else {
                self.unread_executions == 0 || self.error.is_some()
            };
            if done {
                return Ok(());
            }
            let msg = self.conn.read_message().await?;
            self.answer(msg)?;
        }
    }

    fn answer(&mut self, msg: BackendMessage) -> Result<()> {
        let unexpected = |m: &BackendMessage, due: Option<&Due>| {
            ClientError::Unexpected(format!(
                "unexpected {} in a pipeline (waiting for {due:?})",
                message_name(m)
            ))
        };
        match (&msg, self.due.front()) {
            (BackendMessage::ParseComplete, Some(Due::Parse(_))) => {
                self.due.pop_front();
            }
            (BackendMessage::BindComplete, Some(Due::Bind)) => {
                self.due.pop_front();
            }
            (BackendMessage::DataRow(_), Some(Due::Execute)) => {
                if let BackendMessage::DataRow(cols) = msg {
                    self.batch.rows.push(cols);
                }
            }
            (BackendMessage::RowDescription(_) | BackendMessage::NoData, Some(Due::Execute)) => {}
            (
                BackendMessage::CommandComplete { .. } | BackendMessage::EmptyQueryResponse,
                Some(Due::Execute),
            ) => {
                if let BackendMessage::CommandComplete { tag } = &msg {
                    let n = rows_affected(tag);
                    self.batch.rows_affected += n.unwrap_or(0);
                    if n == Some(0) && (tag.starts_with("UPDATE") || tag.starts_with("DELETE")) {
                        self.batch.unmatched += 1;
                    }
                }
                self.batch.executions += 1;
                self.due.pop_front();
                self.unread_executions = self.unread_executions.saturating_sub(1);
            }
            (BackendMessage::ErrorResponse(_), Some(_)) => {
                if let BackendMessage::ErrorResponse(fields) = msg {
                    self.error.get_or_insert(ServerError { fields });
                }
                self.skip_to_sync();
            }
            (BackendMessage::ReadyForQuery { .. }, Some(Due::Sync)) => {
                self.due.pop_front();
            }
            (m, due) => return Err(unexpected(m, due)),
        }
        Ok(())
    }

    /// After an error the server skips every message up to the next Sync: nothing more comes for
    /// them. Statements whose Parse was skipped do not exist.
    fn skip_to_sync(&mut self) {
        self.unread_executions = 0;
        while let Some(d) = self.due.front() {
            match d {
                Due::Sync => break,
                Due::Parse(name) => {
                    let name = name.clone();
                    self.statements.retain(|_, n| *n != name);
                }
                Due::Bind | Due::Execute => {}
            }
            self.due.pop_front();
        }
    }
}

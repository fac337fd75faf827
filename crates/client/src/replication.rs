//! Typed replication commands on a [`Connection`] in replication mode.

use bytes::Bytes;
use walrelay_protocol::command::{self, ServerVersion};
use walrelay_protocol::message::BackendMessage;
use walrelay_protocol::{Lsn, TimelineId, WalSegmentSize};

use crate::connection::{message_name, Connection, QueryResult};
use crate::error::{ClientError, Result, ServerError};

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_identifier: u64,
    pub timeline: TimelineId,
    /// The server's current flush position (on a standby: its replay position).
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// READ_REPLICATION_SLOT's answer for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlotInfo {
    pub slot_type: String,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// Where the server continues after the end of a timeline in START_REPLICATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub next_timeline: TimelineId,
    pub next_start: Lsn,
}

/// How the server answered START_REPLICATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedReplication {
    /// CopyBoth: WAL follows.
    Streaming,
    /// The start point is the end of a historic timeline: nothing to stream there, continue on
    /// the next timeline at its start.
    TimelineEnded(TimelineSwitch),
}

fn one_row<'a>(results: &'a [QueryResult], what: &str) -> Result<&'a QueryResult> {
    match results.first() {
        Some(r) if r.rows.len() == 1 => Ok(r),
        Some(r) => Err(ClientError::Unexpected(format!(
            "{what} returned {} rows, expected 1",
            r.rows.len()
        ))),
        None => Err(ClientError::Unexpected(format!(
            "{what} returned no result"
        ))),
    }
}

fn parse_field<T: std::str::FromStr>(r: &QueryResult, col: usize, what: &str) -> Result<T> {
    r.get_idx(0, col)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ClientError::Unexpected(format!("{what}: invalid field {col}")))
}

impl Connection {
    pub async fn identify_system(&mut self) -> Result<IdentifySystem> {
        let res = self.simple_query(&command::identify_system()).await?;
        let r = one_row(&res, "IDENTIFY_SYSTEM")?;
        if r.columns.len() < 3 {
            return Err(ClientError::Unexpected(
                "IDENTIFY_SYSTEM returned fewer than 3 fields".into(),
            ));
        }
        let system_identifier: u64 = parse_field(r, 0, "IDENTIFY_SYSTEM systemid")?;
        let timeline: u32 = parse_field(r, 1, "IDENTIFY_SYSTEM timeline")?;
        let xlogpos: Lsn = parse_field(r, 2, "IDENTIFY_SYSTEM xlogpos")?;
        if timeline == 0 {
            return Err(ClientError::Unexpected(
                "IDENTIFY_SYSTEM returned timeline 0".into(),
            ));
        }
        Ok(IdentifySystem {
            system_identifier,
            timeline: TimelineId(timeline),
            xlogpos,
            dbname: r.get_idx(0, 3).map(str::to_string),
        })
    }

    /// `SHOW name` over the replication connection.
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let sql = command::show(name).map_err(|e| ClientError::Config(e.to_string()))?;
        let res = self.simple_query(&sql).await?;
        let r = one_row(&res, "SHOW")?;
        r.get_idx(0, 0)
            .map(str::to_string)
            .ok_or_else(|| ClientError::Unexpected(format!("SHOW {name} returned NULL")))
    }

    /// The server's `wal_segment_size` (fixed at 16 MB before PostgreSQL 11).
    pub async fn wal_segment_size(&mut self) -> Result<WalSegmentSize> {
        let v = self.show("wal_segment_size").await?;
        WalSegmentSize::parse_show(&v).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// TIMELINE_HISTORY: the file name and the exact bytes of the history file.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes)> {
        let res = self.simple_query(&command::timeline_history(tli)).await?;
        let r = one_row(&res, "TIMELINE_HISTORY")?;
        let name = r
            .get_idx(0, 0)
            .ok_or_else(|| ClientError::Unexpected("TIMELINE_HISTORY without file name".into()))?
            .to_string();
        if name != tli.history_file_name() {
            return Err(ClientError::Unexpected(format!(
                "TIMELINE_HISTORY {} returned file {name:?}",
                tli.0
            )));
        }
        let content = r
            .rows
            .first()
            .and_then(|row| row.get(1))
            .and_then(|v| v.clone())
            .ok_or_else(|| ClientError::Unexpected("TIMELINE_HISTORY without content".into()))?;
        Ok((name, content))
    }

    /// Creates a physical slot; returns its consistent point when the server reports one.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        temporary: bool,
        reserve_wal: bool,
    ) -> Result<Option<Lsn>> {
        let sql =
            command::create_physical_slot(self.server_version(), name, temporary, reserve_wal)
                .map_err(|e| ClientError::Config(e.to_string()))?;
        let res = self.simple_query(&sql).await?;
        Ok(res
            .first()
            .and_then(|r| r.get(0, "consistent_point"))
            .and_then(|v| v.parse().ok()))
    }

    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let sql = command::drop_slot(name, wait).map_err(|e| ClientError::Config(e.to_string()))?;
        self.simple_query(&sql).await.map(|_| ())
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+). `Ok(None)` when the slot does not exist.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<ReplicationSlotInfo>> {
        let sql = command::read_replication_slot(self.server_version(), name)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let res = self.simple_query(&sql).await?;
        let r = one_row(&res, "READ_REPLICATION_SLOT")?;
        let Some(slot_type) = r.get_idx(0, 0) else {
            return Ok(None);
        };
        Ok(Some(ReplicationSlotInfo {
            slot_type: slot_type.to_string(),
            restart_lsn: r.get_idx(0, 1).and_then(|v| v.parse().ok()),
            restart_tli: r.get_idx(0, 2).and_then(|v| v.parse().ok()).map(TimelineId),
        }))
    }

    /// Sends START_REPLICATION and waits for the server's answer. On
    /// [`StartedReplication::Streaming`] read with `read_message` and answer with
    /// `queue_copy_data`; on [`StartedReplication::TimelineEnded`] the connection is ready for
    /// the next command.
    ///
    /// A start point exactly at the end of a historic timeline (its switch point) gets no COPY at
    /// all: the walsender (`StartReplication` in walsender.c) answers with the same one-row result
    /// it sends after the COPY of a historic timeline — next timeline, its start — then
    /// CommandComplete and ReadyForQuery.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<StartedReplication> {
        let sql = command::start_replication(slot, start, timeline)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        self.queue_query(&sql)?;
        self.flush().await?;
        match self.read_message().await? {
            BackendMessage::CopyBothResponse(_) => Ok(StartedReplication::Streaming),
            BackendMessage::RowDescription(_) => match self.finish_replication().await? {
                Some(switch) => Ok(StartedReplication::TimelineEnded(switch)),
                None => Err(ClientError::Unexpected(
                    "START_REPLICATION returned a result without the next timeline".into(),
                )),
            },
            BackendMessage::ErrorResponse(e) => {
                let _ = self.drain_until_ready().await;
                Err(ClientError::server(e))
            }
            other => Err(ClientError::Unexpected(format!(
                "unexpected {} in reply to START_REPLICATION",
                message_name(&other)
            ))),
        }
    }

    /// After the server ended the CopyBoth stream (CopyDone received and answered), reads the
    /// end-of-timeline result (next timeline and its start) if there is one, through ReadyForQuery.
    pub async fn finish_replication(&mut self) -> Result<Option<TimelineSwitch>> {
        let mut switch = None;
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::RowDescription(_) | BackendMessage::CommandComplete { .. } => {}
                BackendMessage::DataRow(cols) => {
                    let text = |i: usize| {
                        cols.get(i)
                            .and_then(|c| c.as_ref())
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .map(str::to_string)
                    };
                    let tli = text(0).and_then(|v| v.parse::<u32>().ok());
                    let lsn = text(1).and_then(|v| v.parse::<Lsn>().ok());
                    match (tli, lsn) {
                        (Some(t), Some(l)) if t > 0 => {
                            switch = Some(TimelineSwitch {
                                next_timeline: TimelineId(t),
                                next_start: l,
                            })
                        }
                        _ => {
                            return Err(ClientError::Unexpected(
                                "invalid end-of-timeline result from START_REPLICATION".into(),
                            ))
                        }
                    }
                }
                BackendMessage::CopyData(_) => {}
                BackendMessage::CopyDone => {}
                BackendMessage::ErrorResponse(e) => {
                    error.get_or_insert(ServerError { fields: e });
                }
                BackendMessage::ReadyForQuery { .. } => break,
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} after the end of streaming",
                        message_name(&other)
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(ClientError::Server(Box::new(e))),
            None => Ok(switch),
        }
    }

    pub fn version(&self) -> ServerVersion {
        self.server_version()
    }
}

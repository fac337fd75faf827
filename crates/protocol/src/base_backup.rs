//! What `BASE_BACKUP` answers besides the archives: its result sets and its archive names.
//!
//! The command (built by [`crate::command::base_backup`]) is answered, around the archives, by
//! three result sets (`SendXlogRecPtrResult()` and `SendBackupHeader()` in PostgreSQL's
//! `src/backend/backup/basebackup_copy.c`):
//!
//! * the start position, one row of (`recptr`, `tli`), sent after the checkpoint;
//! * the tablespace header, one row per tablespace of (`spcoid`, `spclocation`, `size`); the main
//!   data directory is the row whose `spcoid` is NULL, `size` (kB) is NULL without `PROGRESS`;
//! * the end position, like the start.
//!
//! This module turns those rows, decoded from RowDescription and DataRow messages, into
//! [`BackupPosition`] and [`TablespaceHeader`] values, refusing anything a PostgreSQL server would
//! not send. It does no IO: reading the messages is the caller's.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use thiserror::Error;

use crate::{Lsn, TimelineId};

/// Which archive of a base backup: `base.tar` or `<oid>.tar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// `base.tar`: the main data directory.
    Base,
    /// `<oid>.tar`: one tablespace.
    Tablespace(u32),
}

impl ArchiveKind {
    /// Classifies an archive name as the server sends it in PostgreSQL 15+'s `'n'` message.
    pub fn from_archive_name(name: &str) -> Option<ArchiveKind> {
        let stem = name.strip_suffix(".tar")?;
        if stem == "base" {
            return Some(ArchiveKind::Base);
        }
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        stem.parse()
            .ok()
            .filter(|&oid| oid != 0)
            .map(ArchiveKind::Tablespace)
    }

    /// The archive's name: `base.tar` or `<oid>.tar`.
    pub fn archive_name(self) -> String {
        match self {
            ArchiveKind::Base => "base.tar".to_string(),
            ArchiveKind::Tablespace(oid) => format!("{oid}.tar"),
        }
    }
}

/// A WAL position with its timeline, as `BASE_BACKUP` reports its start and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupPosition {
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

impl fmt::Display for BackupPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on timeline {}", self.lsn, self.timeline)
    }
}

/// One row of the tablespace header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceHeader {
    /// `spcoid`: `None` for the main data directory.
    pub oid: Option<u32>,
    /// `spclocation`: `None` for the main data directory; relative (`pg_tblspc/<oid>`) for an
    /// in-place tablespace.
    pub location: Option<String>,
    /// Estimated size in kB; `None` without `PROGRESS`.
    pub size_kb: Option<u64>,
}

impl TablespaceHeader {
    /// The archive this row stands for.
    pub fn archive_kind(&self) -> ArchiveKind {
        match self.oid {
            None => ArchiveKind::Base,
            Some(oid) => ArchiveKind::Tablespace(oid),
        }
    }
}

/// A result set as decoded from its RowDescription and DataRow messages: column names, and
/// values as sent (text format; `None` is NULL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl ResultRows {
    /// The value at (`row`, `col`) as text; `None` for NULL.
    pub fn text(&self, row: usize, col: usize) -> Result<Option<&str>, BackupResultError> {
        match self.rows.get(row).and_then(|r| r.get(col)) {
            None => Err(BackupResultError::NoSuchValue { row, col }),
            Some(None) => Ok(None),
            Some(Some(b)) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| BackupResultError::NotUtf8),
        }
    }
}

/// A result set of `BASE_BACKUP` that no PostgreSQL server would send.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BackupResultError {
    #[error("result has no column {col} in row {row}")]
    NoSuchValue { row: usize, col: usize },
    #[error("a result value is not valid UTF-8")]
    NotUtf8,
    #[error("the {which} position result has {rows} rows and {columns} columns, expected 1 row and 2 columns")]
    PositionShape {
        which: PositionKind,
        rows: usize,
        columns: usize,
    },
    #[error("invalid {0} position")]
    InvalidPosition(PositionKind),
    #[error("invalid {0} timeline")]
    InvalidTimeline(PositionKind),
    #[error("the tablespace header has {0} columns, expected at least 2")]
    HeaderColumns(usize),
    #[error("invalid tablespace OID \"{0}\"")]
    InvalidOid(String),
    #[error("invalid tablespace size \"{0}\"")]
    InvalidSize(String),
    #[error("tablespace {0} has no location")]
    NoLocation(u32),
    #[error("a tablespace has an empty location")]
    EmptyLocation,
    #[error("the tablespace header has {0} rows for the data directory, expected 1")]
    DataDirectoryRows(usize),
    #[error("tablespace {0} appears twice in the header")]
    DuplicateTablespace(u32),
}

/// Which of the two position result sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionKind {
    Start,
    End,
}

impl fmt::Display for PositionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PositionKind::Start => "start",
            PositionKind::End => "end",
        })
    }
}

/// The start or end position: exactly one row of (`recptr`, `tli`), an LSN and a timeline > 0.
pub fn parse_backup_position(
    rows: &ResultRows,
    which: PositionKind,
) -> Result<BackupPosition, BackupResultError> {
    if rows.rows.len() != 1 || rows.columns.len() < 2 {
        return Err(BackupResultError::PositionShape {
            which,
            rows: rows.rows.len(),
            columns: rows.columns.len(),
        });
    }
    let lsn: Lsn = rows
        .text(0, 0)?
        .and_then(|v| v.parse().ok())
        .ok_or(BackupResultError::InvalidPosition(which))?;
    let timeline: u32 = rows
        .text(0, 1)?
        .and_then(|v| v.trim().parse().ok())
        .filter(|&t| t > 0)
        .ok_or(BackupResultError::InvalidTimeline(which))?;
    Ok(BackupPosition {
        lsn,
        timeline: TimelineId(timeline),
    })
}

/// The tablespace header: one row for the data directory (NULL OID), one per tablespace with a
/// non-zero OID, once each, and a non-empty location; the size column is optional.
pub fn parse_tablespace_header(
    rows: &ResultRows,
) -> Result<Vec<TablespaceHeader>, BackupResultError> {
    if rows.columns.len() < 2 {
        return Err(BackupResultError::HeaderColumns(rows.columns.len()));
    }
    let mut out = Vec::with_capacity(rows.rows.len());
    for i in 0..rows.rows.len() {
        let oid = match rows.text(i, 0)? {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&o| o != 0)
                    .ok_or_else(|| BackupResultError::InvalidOid(v.to_string()))?,
            ),
        };
        let location = rows.text(i, 1)?.map(str::to_string);
        let size_kb = if rows.columns.len() >= 3 {
            match rows.text(i, 2)? {
                None => None,
                Some(v) => {
                    let n: i64 = v
                        .trim()
                        .parse()
                        .map_err(|_| BackupResultError::InvalidSize(v.to_string()))?;
                    u64::try_from(n).ok()
                }
            }
        } else {
            None
        };
        match (oid, &location) {
            (Some(oid), None) => return Err(BackupResultError::NoLocation(oid)),
            (Some(_), Some(l)) if l.is_empty() => return Err(BackupResultError::EmptyLocation),
            _ => {}
        }
        out.push(TablespaceHeader {
            oid,
            location,
            size_kb,
        });
    }
    let bases = out.iter().filter(|h| h.oid.is_none()).count();
    if bases != 1 {
        return Err(BackupResultError::DataDirectoryRows(bases));
    }
    let mut oids = HashSet::new();
    for h in &out {
        if let Some(oid) = h.oid {
            if !oids.insert(oid) {
                return Err(BackupResultError::DuplicateTablespace(oid));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::message::{FieldDescription, MAX_MESSAGE_LEN};
    use crate::server::{encode_command_complete, encode_data_row, encode_row_description};
    use crate::BackendMessage;

    fn rows(columns: &[&str], values: &[&[Option<&str>]]) -> ResultRows {
        ResultRows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: values
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                        .collect()
                })
                .collect(),
        }
    }

    /// The wire bytes of a result set: RowDescription, DataRows, CommandComplete.
    fn wire(columns: &[&str], values: &[&[Option<&[u8]>]]) -> BytesMut {
        let mut out = BytesMut::new();
        let fields: Vec<FieldDescription> =
            columns.iter().map(|c| FieldDescription::text(c)).collect();
        encode_row_description(&fields, &mut out).unwrap();
        for row in values {
            encode_data_row(row, &mut out).unwrap();
        }
        encode_command_complete("SELECT", &mut out).unwrap();
        out
    }

    /// Decodes a result set from its wire bytes; `None` if they end before CommandComplete.
    fn decode(mut buf: BytesMut) -> Option<ResultRows> {
        let mut set = ResultRows::default();
        loop {
            match BackendMessage::parse(&mut buf, MAX_MESSAGE_LEN).unwrap()? {
                BackendMessage::RowDescription(fields) => {
                    set.columns = fields.into_iter().map(|f| f.name).collect()
                }
                BackendMessage::DataRow(values) => set.rows.push(values),
                BackendMessage::CommandComplete { .. } => return Some(set),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn archive_names() {
        assert_eq!(
            ArchiveKind::from_archive_name("base.tar"),
            Some(ArchiveKind::Base)
        );
        assert_eq!(
            ArchiveKind::from_archive_name("16384.tar"),
            Some(ArchiveKind::Tablespace(16384))
        );
        for bad in [
            "base",
            "0.tar",
            ".tar",
            "x.tar",
            "99999999999.tar",
            "pg_wal.tar",
            "1.tar.gz",
        ] {
            assert_eq!(ArchiveKind::from_archive_name(bad), None, "{bad}");
        }
        for kind in [ArchiveKind::Base, ArchiveKind::Tablespace(16384)] {
            assert_eq!(
                ArchiveKind::from_archive_name(&kind.archive_name()),
                Some(kind)
            );
        }
    }

    #[test]
    fn header_rows() {
        let h = parse_tablespace_header(&rows(
            &["spcoid", "spclocation", "size"],
            &[
                &[Some("16384"), Some("/srv/ts"), Some("100")],
                &[None, None, Some("2000")],
            ],
        ))
        .unwrap();
        assert_eq!(h[0].archive_kind(), ArchiveKind::Tablespace(16384));
        assert_eq!(h[1].archive_kind(), ArchiveKind::Base);
        assert_eq!(h[1].size_kb, Some(2000));
        // without PROGRESS the size is NULL
        let h = parse_tablespace_header(&rows(
            &["spcoid", "spclocation", "size"],
            &[&[None, None, None]],
        ))
        .unwrap();
        assert_eq!(h[0].size_kb, None);
        // two columns: no size at all
        let h =
            parse_tablespace_header(&rows(&["spcoid", "spclocation"], &[&[None, None]])).unwrap();
        assert_eq!(h[0].size_kb, None);
        let cols = &["spcoid", "spclocation", "size"];
        for (bad, expected) in [
            (rows(cols, &[]), BackupResultError::DataDirectoryRows(0)),
            (
                rows(cols, &[&[None, None, None], &[None, None, None]]),
                BackupResultError::DataDirectoryRows(2),
            ),
            (
                rows(cols, &[&[Some("0"), Some("/x"), None], &[None, None, None]]),
                BackupResultError::InvalidOid("0".into()),
            ),
            (
                rows(cols, &[&[Some("x"), Some("/x"), None], &[None, None, None]]),
                BackupResultError::InvalidOid("x".into()),
            ),
            (
                rows(cols, &[&[Some("7"), None, None], &[None, None, None]]),
                BackupResultError::NoLocation(7),
            ),
            (
                rows(cols, &[&[Some("7"), Some(""), None], &[None, None, None]]),
                BackupResultError::EmptyLocation,
            ),
            (
                rows(
                    cols,
                    &[
                        &[Some("7"), Some("/a"), None],
                        &[Some("7"), Some("/b"), None],
                        &[None, None, None],
                    ],
                ),
                BackupResultError::DuplicateTablespace(7),
            ),
            (
                rows(cols, &[&[None, None, Some("lots")]]),
                BackupResultError::InvalidSize("lots".into()),
            ),
            (
                rows(&["spcoid"], &[&[None]]),
                BackupResultError::HeaderColumns(1),
            ),
            // a row shorter than the description
            (
                rows(cols, &[&[None, None]]),
                BackupResultError::NoSuchValue { row: 0, col: 2 },
            ),
        ] {
            assert_eq!(parse_tablespace_header(&bad), Err(expected), "{bad:?}");
        }
    }

    #[test]
    fn header_from_wire_bytes() {
        let bytes = wire(
            &["spcoid", "spclocation", "size"],
            &[
                &[Some(b"16384"), Some(b"/srv/ts"), Some(b"100")],
                &[None, None, Some(b"2000")],
            ],
        );
        let h = parse_tablespace_header(&decode(bytes.clone()).unwrap()).unwrap();
        assert_eq!(
            h,
            [
                TablespaceHeader {
                    oid: Some(16384),
                    location: Some("/srv/ts".into()),
                    size_kb: Some(100)
                },
                TablespaceHeader {
                    oid: None,
                    location: None,
                    size_kb: Some(2000)
                }
            ]
        );
        // cut anywhere before its end, the result set is incomplete: nothing to parse yet
        for cut in 0..bytes.len() {
            assert_eq!(decode(BytesMut::from(&bytes[..cut])), None, "cut at {cut}");
        }
        // a location that is not UTF-8
        let bytes = wire(
            &["spcoid", "spclocation", "size"],
            &[
                &[Some(b"16384"), Some(b"/srv/\xff"), None],
                &[None, None, None],
            ],
        );
        assert_eq!(
            parse_tablespace_header(&decode(bytes).unwrap()),
            Err(BackupResultError::NotUtf8)
        );
    }

    #[test]
    fn positions() {
        let p = parse_backup_position(
            &rows(&["recptr", "tli"], &[&[Some("0/2000028"), Some("1")]]),
            PositionKind::Start,
        )
        .unwrap();
        assert_eq!(p.lsn, Lsn(0x200_0028));
        assert_eq!(p.timeline, TimelineId(1));
        assert_eq!(p.to_string(), "0/2000028 on timeline 1");
        for bad in [
            rows(&["recptr", "tli"], &[]),
            rows(&["recptr"], &[&[Some("0/1")]]),
            rows(&["recptr", "tli"], &[&[Some("nope"), Some("1")]]),
            rows(&["recptr", "tli"], &[&[Some("0/1"), Some("0")]]),
            rows(&["recptr", "tli"], &[&[None, Some("1")]]),
            rows(
                &["recptr", "tli"],
                &[&[Some("0/1"), Some("1")], &[Some("0/2"), Some("1")]],
            ),
        ] {
            assert!(
                parse_backup_position(&bad, PositionKind::Start).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn positions_from_wire_bytes() {
        let cols = &["recptr", "tli"];
        let parse = |values: &[&[Option<&[u8]>]]| {
            parse_backup_position(&decode(wire(cols, values)).unwrap(), PositionKind::End)
        };
        assert_eq!(
            parse(&[&[Some(b"1/A0"), Some(b"3")]]),
            Ok(BackupPosition {
                lsn: Lsn(0x1_0000_00A0),
                timeline: TimelineId(3)
            })
        );
        for (values, expected) in [
            (
                &[][..],
                BackupResultError::PositionShape {
                    which: PositionKind::End,
                    rows: 0,
                    columns: 2,
                },
            ),
            (
                &[&[Some(&b"0/1/2"[..]), Some(b"1")][..]][..],
                BackupResultError::InvalidPosition(PositionKind::End),
            ),
            (
                &[&[None, Some(&b"1"[..])][..]][..],
                BackupResultError::InvalidPosition(PositionKind::End),
            ),
            (
                &[&[Some(&b"0/1"[..]), None][..]][..],
                BackupResultError::InvalidTimeline(PositionKind::End),
            ),
            (
                &[&[Some(&b"0/1"[..]), Some(b"-1")][..]][..],
                BackupResultError::InvalidTimeline(PositionKind::End),
            ),
            (
                &[&[Some(&b"0/1"[..])][..]][..],
                BackupResultError::NoSuchValue { row: 0, col: 1 },
            ),
        ] {
            assert_eq!(parse(values), Err(expected.clone()), "{expected}");
        }
        assert_eq!(
            BackupResultError::PositionShape {
                which: PositionKind::Start,
                rows: 2,
                columns: 1
            }
            .to_string(),
            "the start position result has 2 rows and 1 columns, expected 1 row and 2 columns"
        );
    }
}

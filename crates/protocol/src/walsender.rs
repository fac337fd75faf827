//! What a walsender answers, per major: the result sets and command tags of the replication
//! commands, as the clients of that major expect them (the server side of [`crate::command`]).
//!
//! A server that speaks for PostgreSQL N (it reports N's `server_version`) must also answer like
//! N, because libpq's clients branch on the version and some check column counts and types:
//!
//! | | 10–12 | 13+ |
//! |---|---|---|
//! | CommandComplete after a command | `SELECT` | the command's name |
//! | `DROP_REPLICATION_SLOT` | `DROP_REPLICATION_SLOT` + `SELECT` | `DROP_REPLICATION_SLOT` |
//! | after `START_REPLICATION` | `START_STREAMING` + `SELECT` | `START_STREAMING` + `START_REPLICATION` |
//!
//! IDENTIFY_SYSTEM's `timeline` column is `int4` up to 15 and `int8` from 16; TIMELINE_HISTORY's
//! `content` is labelled `bytea` up to 13 and `text` from 14 (the raw file either way).
//! Source: `walsender.c` (`IdentifySystem`, `SendTimeLineHistory`, `StartReplication`,
//! `CreateReplicationSlot`, `DropReplicationSlot`, `ReadReplicationSlot`) of each release, and
//! `exec_replication_command`.

use bytes::BytesMut;

use crate::message::{CopyResponse, FieldDescription};
use crate::server::{
    encode_command_complete, encode_copy_both_response, encode_data_row, encode_row_description,
    EncodeError,
};
use crate::{Lsn, TimelineId};

/// Type OIDs of the replication result sets.
pub const INT8_OID: u32 = 20;
pub const INT4_OID: u32 = 23;
pub const TEXT_OID: u32 = 25;
pub const BYTEA_OID: u32 = 17;

fn column(name: &str, type_oid: u32) -> FieldDescription {
    let type_size = match type_oid {
        INT8_OID => 8,
        INT4_OID => 4,
        _ => -1,
    };
    FieldDescription {
        type_oid,
        type_size,
        ..FieldDescription::text(name)
    }
}

/// The CommandComplete tag that ends `command`'s reply: its own name from 13
/// (`EndReplicationCommand`), `SELECT` before.
pub fn command_tag(major: u32, command: &'static str) -> &'static str {
    if major >= 13 {
        command
    } else {
        "SELECT"
    }
}

/// One row with these columns, then the command's tag.
fn one_row(
    major: u32,
    command: &'static str,
    columns: &[FieldDescription],
    values: &[Option<&[u8]>],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let r = encode_row_description(columns, out)
        .and_then(|()| encode_data_row(values, out))
        .and_then(|()| encode_command_complete(command_tag(major, command), out));
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// IDENTIFY_SYSTEM: `systemid`, `timeline`, `xlogpos`, `dbname` (NULL for physical replication).
pub fn identify_system(
    major: u32,
    system_identifier: u64,
    timeline: TimelineId,
    xlogpos: Lsn,
    dbname: Option<&str>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let tli_type = if major >= 16 { INT8_OID } else { INT4_OID };
    let (sysid, tli, pos) = (
        system_identifier.to_string(),
        timeline.0.to_string(),
        xlogpos.to_string(),
    );
    one_row(
        major,
        "IDENTIFY_SYSTEM",
        &[
            column("systemid", TEXT_OID),
            column("timeline", tli_type),
            column("xlogpos", TEXT_OID),
            column("dbname", TEXT_OID),
        ],
        &[
            Some(sysid.as_bytes()),
            Some(tli.as_bytes()),
            Some(pos.as_bytes()),
            dbname.map(str::as_bytes),
        ],
        out,
    )
}

/// `SHOW name`: one text column named after the setting.
pub fn show(major: u32, name: &str, value: &str, out: &mut BytesMut) -> Result<(), EncodeError> {
    one_row(
        major,
        "SHOW",
        &[column(name, TEXT_OID)],
        &[Some(value.as_bytes())],
        out,
    )
}

/// `TIMELINE_HISTORY n`: the file's name and its exact bytes.
pub fn timeline_history(
    major: u32,
    timeline: TimelineId,
    content: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let content_type = if major >= 14 { TEXT_OID } else { BYTEA_OID };
    let name = timeline.history_file_name();
    one_row(
        major,
        "TIMELINE_HISTORY",
        &[
            column("filename", TEXT_OID),
            column("content", content_type),
        ],
        &[Some(name.as_bytes()), Some(content)],
        out,
    )
}

/// What READ_REPLICATION_SLOT reports of an existing physical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn` (from the server's history).
    pub restart_tli: Option<TimelineId>,
}

/// `READ_REPLICATION_SLOT name` (15+): `slot_type`, `restart_lsn`, `restart_tli`; a slot that
/// does not exist is one row of NULLs, not an error.
pub fn read_replication_slot(
    slot: Option<SlotInfo>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let lsn = slot.and_then(|s| s.restart_lsn).map(|l| l.to_string());
    let tli = slot.and_then(|s| s.restart_tli).map(|t| t.0.to_string());
    one_row(
        15,
        "READ_REPLICATION_SLOT",
        &[
            column("slot_type", TEXT_OID),
            column("restart_lsn", TEXT_OID),
            column("restart_tli", INT8_OID),
        ],
        &[
            slot.map(|_| &b"physical"[..]),
            lsn.as_deref().map(str::as_bytes),
            tli.as_deref().map(str::as_bytes),
        ],
        out,
    )
}

/// `CREATE_REPLICATION_SLOT` of a physical slot: `slot_name`, `consistent_point` (`0/0` for a
/// physical slot), `snapshot_name` and `output_plugin` (NULL).
pub fn create_replication_slot(
    major: u32,
    name: &str,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    one_row(
        major,
        "CREATE_REPLICATION_SLOT",
        &[
            column("slot_name", TEXT_OID),
            column("consistent_point", TEXT_OID),
            column("snapshot_name", TEXT_OID),
            column("output_plugin", TEXT_OID),
        ],
        &[Some(name.as_bytes()), Some(b"0/0"), None, None],
        out,
    )
}

/// `DROP_REPLICATION_SLOT`: no rows.
pub fn drop_replication_slot(major: u32, out: &mut BytesMut) -> Result<(), EncodeError> {
    encode_command_complete("DROP_REPLICATION_SLOT", out)?;
    if major < 13 {
        encode_command_complete("SELECT", out)?;
    }
    Ok(())
}

/// The start of streaming: CopyBothResponse, no columns.
pub fn copy_both_response(out: &mut BytesMut) {
    let r = encode_copy_both_response(
        &CopyResponse {
            binary: false,
            column_formats: Vec::new(),
        },
        out,
    );
    debug_assert!(
        r.is_ok(),
        "a CopyBothResponse without columns always encodes"
    );
}

/// What follows a START_REPLICATION once both sides ended the COPY (or, at a historic timeline's
/// end, instead of it): for a historic timeline the row `next_tli`, `next_tli_startpos`; then
/// `START_STREAMING` and the second tag that walreceiver (`libpqrcv_endstreaming`) waits for.
pub fn end_of_streaming(
    major: u32,
    next: Option<(TimelineId, Lsn)>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Some((tli, start)) = next {
        let (t, s) = (tli.0.to_string(), start.to_string());
        encode_row_description(
            &[
                column("next_tli", INT8_OID),
                column("next_tli_startpos", TEXT_OID),
            ],
            out,
        )?;
        encode_data_row(&[Some(t.as_bytes()), Some(s.as_bytes())], out)?;
    }
    encode_command_complete("START_STREAMING", out)?;
    encode_command_complete(command_tag(major, "START_REPLICATION"), out)
}

/// A clean shutdown while streaming (`WalSndDone`): CommandComplete `COPY 0` inside the COPY,
/// without CopyDone; the connection is closed after it.
pub fn shutdown_while_streaming(out: &mut BytesMut) {
    let r = encode_command_complete("COPY 0", out);
    debug_assert!(r.is_ok());
}

/// The run-time parameters a walsender of `major` reports at startup (`GUC_REPORT` settings;
/// a physical walsender never sets a database encoding, so it reports `SQL_ASCII`).
/// `integer_datetimes` must be `on` (pg_basebackup and pg_receivewal exit otherwise);
/// `server_version` is what every client branches on.
pub fn startup_parameters(
    major: u32,
    server_version: &str,
    user: &str,
    application_name: &str,
    client_encoding: &str,
) -> Vec<(&'static str, String)> {
    let mut p: Vec<(&'static str, String)> = vec![
        ("application_name", application_name.to_string()),
        ("client_encoding", client_encoding.to_string()),
        ("DateStyle", "ISO, MDY".into()),
        ("integer_datetimes", "on".into()),
        ("IntervalStyle", "postgres".into()),
        ("is_superuser", "off".into()),
        ("server_encoding", "SQL_ASCII".into()),
        ("server_version", server_version.to_string()),
        ("session_authorization", user.to_string()),
        ("standard_conforming_strings", "on".into()),
        ("TimeZone", "UTC".into()),
    ];
    if major >= 14 {
        p.push(("default_transaction_read_only", "off".into()));
        p.push(("in_hot_standby", "off".into()));
    }
    if major >= 16 {
        p.push(("scram_iterations", "4096".into()));
    }
    if major >= 18 {
        p.push(("search_path", "\"$user\", public".into()));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MAX_MESSAGE_LEN;
    use crate::BackendMessage;
    use bytes::Bytes;

    fn decode_all(mut out: BytesMut) -> Vec<BackendMessage> {
        let mut v = Vec::new();
        while let Some(m) = BackendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap() {
            v.push(m);
        }
        assert!(out.is_empty());
        v
    }

    fn tag(t: &str) -> BackendMessage {
        BackendMessage::CommandComplete { tag: t.into() }
    }

    /// A DataRow of text values (`None` is NULL).
    fn row(values: &[Option<&'static str>]) -> BackendMessage {
        BackendMessage::DataRow(
            values
                .iter()
                .map(|v| v.map(|t| Bytes::from_static(t.as_bytes())))
                .collect(),
        )
    }

    #[test]
    fn identify_system_bytes_for_pg15() {
        let mut out = BytesMut::new();
        identify_system(
            15,
            7_300_000_000_000_000_001,
            TimelineId(1),
            Lsn(0x3_0000_0148),
            None,
            &mut out,
        )
        .unwrap();
        // RowDescription: 4 fields; the second is int4 (oid 23, size 4).
        let mut expected = vec![b'T'];
        let mut body = vec![0u8, 4];
        for (name, oid, size) in [
            ("systemid", 25u32, -1i16),
            ("timeline", 23, 4),
            ("xlogpos", 25, -1),
            ("dbname", 25, -1),
        ] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&size.to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
        }
        expected.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(&out[..expected.len()], &expected[..]);
        let msgs = decode_all(out);
        assert_eq!(
            msgs[1],
            row(&[Some("7300000000000000001"), Some("1"), Some("3/148"), None])
        );
        assert_eq!(msgs[2], tag("IDENTIFY_SYSTEM"));
        assert_eq!(msgs.len(), 3);
    }

    #[test]
    fn types_and_tags_per_major() {
        let tli_type = |major| {
            let mut out = BytesMut::new();
            identify_system(major, 1, TimelineId(2), Lsn(1), Some("db"), &mut out).unwrap();
            match &decode_all(out)[..] {
                [BackendMessage::RowDescription(cols), _, BackendMessage::CommandComplete { tag }] => {
                    (cols[1].type_oid, tag.clone())
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(tli_type(10), (INT4_OID, "SELECT".to_string()));
        assert_eq!(tli_type(13), (INT4_OID, "IDENTIFY_SYSTEM".to_string()));
        assert_eq!(tli_type(15), (INT4_OID, "IDENTIFY_SYSTEM".to_string()));
        assert_eq!(tli_type(16), (INT8_OID, "IDENTIFY_SYSTEM".to_string()));
        let history_type = |major| {
            let mut out = BytesMut::new();
            timeline_history(
                major,
                TimelineId(2),
                b"1\t0/3000000\tno recovery target specified\n",
                &mut out,
            )
            .unwrap();
            match &decode_all(out)[..] {
                [BackendMessage::RowDescription(cols), BackendMessage::DataRow(row), _] => {
                    assert_eq!(row[0].as_deref(), Some(&b"00000002.history"[..]));
                    cols[1].type_oid
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(history_type(13), BYTEA_OID);
        assert_eq!(history_type(14), TEXT_OID);
        let mut out = BytesMut::new();
        drop_replication_slot(12, &mut out).unwrap();
        assert_eq!(
            decode_all(out),
            vec![tag("DROP_REPLICATION_SLOT"), tag("SELECT")]
        );
        let mut out = BytesMut::new();
        drop_replication_slot(13, &mut out).unwrap();
        assert_eq!(decode_all(out), vec![tag("DROP_REPLICATION_SLOT")]);
        let mut out = BytesMut::new();
        show(11, "wal_segment_size", "16MB", &mut out).unwrap();
        assert_eq!(decode_all(out)[2], tag("SELECT"));
    }

    #[test]
    fn end_of_streaming_sequences() {
        let mut out = BytesMut::new();
        end_of_streaming(12, None, &mut out).unwrap();
        assert_eq!(decode_all(out), vec![tag("START_STREAMING"), tag("SELECT")]);
        let mut out = BytesMut::new();
        end_of_streaming(17, Some((TimelineId(3), Lsn(0x5000_0A28))), &mut out).unwrap();
        let msgs = decode_all(out);
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[1], row(&[Some("3"), Some("0/50000A28")]));
        assert_eq!(msgs[3], tag("START_REPLICATION"));
        let mut out = BytesMut::new();
        copy_both_response(&mut out);
        assert_eq!(&out[..], b"W\0\0\0\x07\0\0\0");
        let mut out = BytesMut::new();
        shutdown_while_streaming(&mut out);
        assert_eq!(decode_all(out), vec![tag("COPY 0")]);
    }

    #[test]
    fn slot_replies() {
        let mut out = BytesMut::new();
        read_replication_slot(None, &mut out).unwrap();
        assert_eq!(decode_all(out)[1], row(&[None, None, None]));
        let mut out = BytesMut::new();
        read_replication_slot(
            Some(SlotInfo {
                restart_lsn: Some(Lsn(0x100_0000)),
                restart_tli: Some(TimelineId(1)),
            }),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            decode_all(out)[1],
            row(&[Some("physical"), Some("0/1000000"), Some("1")])
        );
        let mut out = BytesMut::new();
        create_replication_slot(10, "s", &mut out).unwrap();
        let msgs = decode_all(out);
        assert_eq!(msgs[1], row(&[Some("s"), Some("0/0"), None, None]));
        assert_eq!(msgs[2], tag("SELECT"));
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(show(15, "a\0b", "v", &mut out).is_err());
        assert_eq!(&out[..], b"kept", "nothing half-written");
    }

    #[test]
    fn startup_parameters_per_major() {
        let names = |major| -> Vec<&'static str> {
            startup_parameters(major, "15.4", "u", "app", "UTF8")
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert!(!names(13).contains(&"in_hot_standby"));
        assert!(names(14).contains(&"in_hot_standby"));
        assert!(names(16).contains(&"scram_iterations"));
        assert!(names(18).contains(&"search_path"));
        let p = startup_parameters(10, "10.23", "u", "app", "UTF8");
        assert!(p.contains(&("integer_datetimes", "on".into())));
        assert!(p.contains(&("server_version", "10.23".into())));
    }
}

//! Fake base backups for the [fake walsender](crate::fake_walsender): a [`FakeBackup`]'s content,
//! the `BASE_BACKUP` replies PostgreSQL 15+ ([`pg15_steps`]) and older servers
//! ([`legacy_steps`]) send for it, and a backup manifest as the server writes one
//! ([`backup_manifest`]). Tests cut the steps apart ([`preamble`], [`pg15_archive_steps`],
//! [`trailer`]) and splice misbehaviour in between.
//!
//! The archives themselves are built with [`crate::tar_builder::Tar`].

use sha2::{Digest, Sha256};
use walrelay_protocol::BaseBackupMessage;

use crate::fake_walsender::Step;
use crate::wire::{
    self, base_backup_message, command_complete, copy_data, copy_done, copy_out_response, data_row,
    position, ready_for_query, row_description,
};

/// The content of a fake base backup.
#[derive(Clone, Debug)]
pub struct FakeBackup {
    pub start: String,
    pub end: String,
    pub timeline: u32,
    /// `(oid, server location, archive bytes)`.
    pub tablespaces: Vec<(u32, String, Vec<u8>)>,
    pub base: Vec<u8>,
    pub manifest: Option<Vec<u8>>,
}

fn header_rows(b: &FakeBackup) -> Vec<u8> {
    let mut out = row_description(&["spcoid", "spclocation", "size"]);
    for (oid, loc, data) in &b.tablespaces {
        out.extend(data_row(&[
            Some(&oid.to_string()),
            Some(loc),
            Some(&(data.len() / 1024).to_string()),
        ]));
    }
    out.extend(data_row(&[
        None,
        None,
        Some(&(b.base.len() / 1024).to_string()),
    ]));
    out.extend(command_complete("SELECT"));
    out
}

/// Splits `data` into CopyData messages of at most 8 kB; with `archive_stream`, each payload is a
/// PostgreSQL 15+ `'d'` message.
fn chunks(data: &[u8], archive_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(8192) {
        if archive_stream {
            out.extend(copy_data(&wire::archive_data(c)));
        } else {
            out.extend(copy_data(c));
        }
    }
    out
}

/// The start and header of any version, as separate steps so tests can cut in between.
pub fn preamble(b: &FakeBackup) -> Vec<Step> {
    vec![
        Step::Send(position(&b.start, b.timeline)),
        Step::Send(header_rows(b)),
    ]
}

/// The trailer after the archives: end position, CommandComplete, ReadyForQuery.
pub fn trailer(b: &FakeBackup) -> Vec<Step> {
    let mut out = position(&b.end, b.timeline);
    out.extend(command_complete("BASE_BACKUP"));
    out.extend(ready_for_query());
    vec![Step::Send(out)]
}

/// PostgreSQL 15+: one COPY with 'n'/'d'/'p'/'m' messages.
pub fn pg15_archive_steps(b: &FakeBackup) -> Vec<Step> {
    let mut out = copy_out_response();
    let mut done: u64 = 0;
    let mut archive = |out: &mut Vec<u8>, name: &str, loc: &str, data: &[u8]| {
        out.extend(copy_data(&wire::new_archive(name, loc)));
        out.extend(chunks(data, true));
        done += data.len() as u64;
        out.extend(copy_data(&base_backup_message(
            &BaseBackupMessage::Progress(done),
        )));
    };
    for (oid, loc, data) in &b.tablespaces {
        archive(&mut out, &format!("{oid}.tar"), loc, data);
    }
    archive(&mut out, "base.tar", "", &b.base);
    if let Some(m) = &b.manifest {
        out.extend(copy_data(&base_backup_message(
            &BaseBackupMessage::ManifestFollows,
        )));
        out.extend(chunks(m, true));
    }
    out.extend(copy_done());
    vec![Step::Send(out)]
}

/// The whole PostgreSQL 15+ reply.
pub fn pg15_steps(b: &FakeBackup) -> Vec<Step> {
    let mut steps = preamble(b);
    steps.extend(pg15_archive_steps(b));
    steps.extend(trailer(b));
    steps
}

/// Before PostgreSQL 15: a COPY per tablespace (header order: tablespaces, then base), then one
/// for the manifest.
pub fn legacy_steps(b: &FakeBackup) -> Vec<Step> {
    let mut steps = preamble(b);
    let mut out = Vec::new();
    for (_, _, data) in &b.tablespaces {
        out.extend(copy_out_response());
        out.extend(chunks(data, false));
        out.extend(copy_done());
    }
    out.extend(copy_out_response());
    out.extend(chunks(&b.base, false));
    out.extend(copy_done());
    if let Some(m) = &b.manifest {
        out.extend(copy_out_response());
        out.extend(chunks(m, false));
        out.extend(copy_done());
    }
    steps.push(Step::Send(out));
    steps.extend(trailer(b));
    steps
}

/// A backup manifest as `backup_manifest.c` writes it, CRC-32C per file, with its SHA-256.
/// `files` are `(path as in the manifest, content)`, `wal_ranges` `(timeline, start, end)`.
pub fn backup_manifest(files: &[(&str, &[u8])], wal_ranges: &[(u32, &str, &str)]) -> Vec<u8> {
    let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
    let entries: Vec<String> = files
        .iter()
        .map(|(path, data)| {
            format!(
                "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2024-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                data.len(),
                hex::encode(crc32c::crc32c(data).to_le_bytes())
            )
        })
        .collect();
    text.push_str(&entries.join(",\n"));
    text.push_str("\n],\n\"WAL-Ranges\": [\n");
    let ranges: Vec<String> = wal_ranges
        .iter()
        .map(|(tli, s, e)| {
            format!("{{ \"Timeline\": {tli}, \"Start-LSN\": \"{s}\", \"End-LSN\": \"{e}\" }}")
        })
        .collect();
    text.push_str(&ranges.join(",\n"));
    text.push_str("\n],\n");
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    text.into_bytes()
}

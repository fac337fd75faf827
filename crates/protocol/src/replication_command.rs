//! Reading replication commands as a walsender does: the server side of [`crate::command`].
//!
//! A port of PostgreSQL's replication scanner and grammar (`repl_scanner.l`, `repl_gram.y`, as of
//! 18), for the commands a physical walsender answers:
//!
//! * keywords are **upper-case and case-sensitive** (the flex scanner has no case-insensitive
//!   option): `show wal_segment_size` is not the SHOW command but SQL;
//! * identifiers are down-cased unless double-quoted (`""` inside stands for `"`), and cut to 63
//!   bytes (`NAMEDATALEN - 1`); string literals are single-quoted with `''` for `'`; numbers are
//!   unsigned decimal; an LSN is `hex/hex`; a trailing `;` is allowed;
//! * the first token decides whether the string is a replication command at all
//!   (`replication_scanner_is_replication_command`): if it is not one of the command keywords, the
//!   string is SQL ([`CommandError::NotReplicationCommand`]), which a physical walsender refuses;
//! * anything else that does not parse is a syntax error, SQLSTATE 42601, as is `TIMELINE 0`.
//!
//! `BASE_BACKUP` is only recognized, with its parenthesized options kept (PostgreSQL 15+; the
//! older keyword syntax is kept as text): a relay forwards the command text to a server of the
//! same major, which judges the rest.

use std::fmt;

use thiserror::Error;

use crate::{Lsn, TimelineId};

/// `NAMEDATALEN - 1`: longer identifiers are truncated (with a NOTICE, in PostgreSQL).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A replication command, as the walsender's grammar reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    IdentifySystem,
    /// `SHOW name` (the name as written, down-cased; dotted names allowed).
    Show {
        name: String,
    },
    /// `TIMELINE_HISTORY n`
    TimelineHistory {
        timeline: TimelineId,
    },
    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+).
    ReadReplicationSlot {
        slot: String,
    },
    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] {PHYSICAL | LOGICAL plugin} [options]`, with the
    /// legacy keywords (`RESERVE_WAL`, `EXPORT_SNAPSHOT`, …) turned into the options they stand for.
    CreateReplicationSlot {
        slot: String,
        temporary: bool,
        kind: SlotKind,
        options: Vec<GenericOption>,
    },
    /// `DROP_REPLICATION_SLOT name [WAIT]`
    DropReplicationSlot {
        slot: String,
        wait: bool,
    },
    /// `ALTER_REPLICATION_SLOT name ( options )` (PostgreSQL 17+).
    AlterReplicationSlot {
        slot: String,
        options: Vec<GenericOption>,
    },
    /// `START_REPLICATION [SLOT name] [PHYSICAL] X/X [TIMELINE n]`; `timeline` is `None` when
    /// omitted (the server's current timeline).
    StartReplication {
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimelineId>,
    },
    /// `START_REPLICATION SLOT name LOGICAL X/X [( options )]`
    StartLogicalReplication {
        slot: String,
        start: Lsn,
    },
    /// `BASE_BACKUP [( options )]`, or the legacy keyword syntax (`options` empty then).
    BaseBackup {
        options: Vec<GenericOption>,
    },
    /// `UPLOAD_MANIFEST` (PostgreSQL 17+).
    UploadManifest,
}

/// What kind of slot `CREATE_REPLICATION_SLOT` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    Physical,
    Logical { plugin: String },
}

/// One `name [value]` of a parenthesized option list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericOption {
    pub name: String,
    pub value: Option<OptionValue>,
}

/// An option's value: an identifier, a string literal or an unsigned number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    Ident(String),
    String(String),
    Number(u32),
}

impl GenericOption {
    /// The value as a boolean, as `defGetBoolean` reads it: no value is true; `true`/`false`,
    /// `on`/`off`, `yes`/`no` (any case) and the numbers 0 and 1. `None` for anything else.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            None => Some(true),
            Some(OptionValue::Number(0)) => Some(false),
            Some(OptionValue::Number(1)) => Some(true),
            Some(OptionValue::Number(_)) => None,
            Some(OptionValue::Ident(s)) | Some(OptionValue::String(s)) => {
                match s.to_ascii_lowercase().as_str() {
                    "true" | "on" | "yes" | "t" => Some(true),
                    "false" | "off" | "no" | "f" => Some(false),
                    _ => None,
                }
            }
        }
    }

    /// The value as text (an identifier or a string literal).
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Some(OptionValue::Ident(s)) | Some(OptionValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Why a command string is not a replication command the grammar accepts.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CommandError {
    /// The first token is not a replication command keyword: the string is SQL.
    #[error("not a replication command")]
    NotReplicationCommand,
    /// The grammar's error (SQLSTATE 42601).
    #[error("{0}")]
    Syntax(String),
}

impl CommandError {
    /// The SQLSTATE a walsender reports: 42601 for a syntax error. (SQL in a physical
    /// replication connection is the caller's to refuse, with 0A000.)
    pub fn sqlstate(&self) -> &'static str {
        "42601"
    }
}

fn syntax(message: impl Into<String>) -> CommandError {
    CommandError::Syntax(message.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    BaseBackup,
    IdentifySystem,
    ReadReplicationSlot,
    Show,
    Timeline,
    StartReplication,
    CreateReplicationSlot,
    DropReplicationSlot,
    AlterReplicationSlot,
    TimelineHistory,
    Physical,
    ReserveWal,
    Logical,
    Slot,
    Temporary,
    TwoPhase,
    ExportSnapshot,
    NoexportSnapshot,
    UseSnapshot,
    Wait,
    UploadManifest,
}

/// Keywords, their spelling, and the option name each stands for in an option list
/// (`ident_or_keyword`).
const KEYWORDS: &[(&str, Keyword)] = &[
    ("BASE_BACKUP", Keyword::BaseBackup),
    ("IDENTIFY_SYSTEM", Keyword::IdentifySystem),
    ("READ_REPLICATION_SLOT", Keyword::ReadReplicationSlot),
    ("SHOW", Keyword::Show),
    ("TIMELINE", Keyword::Timeline),
    ("START_REPLICATION", Keyword::StartReplication),
    ("CREATE_REPLICATION_SLOT", Keyword::CreateReplicationSlot),
    ("DROP_REPLICATION_SLOT", Keyword::DropReplicationSlot),
    ("ALTER_REPLICATION_SLOT", Keyword::AlterReplicationSlot),
    ("TIMELINE_HISTORY", Keyword::TimelineHistory),
    ("PHYSICAL", Keyword::Physical),
    ("RESERVE_WAL", Keyword::ReserveWal),
    ("LOGICAL", Keyword::Logical),
    ("SLOT", Keyword::Slot),
    ("TEMPORARY", Keyword::Temporary),
    ("TWO_PHASE", Keyword::TwoPhase),
    ("EXPORT_SNAPSHOT", Keyword::ExportSnapshot),
    ("NOEXPORT_SNAPSHOT", Keyword::NoexportSnapshot),
    ("USE_SNAPSHOT", Keyword::UseSnapshot),
    ("WAIT", Keyword::Wait),
    ("UPLOAD_MANIFEST", Keyword::UploadManifest),
];

impl Keyword {
    fn spelling(self) -> &'static str {
        KEYWORDS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(s, _)| s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Keyword(Keyword),
    Ident(String),
    SConst(String),
    UConst(u32),
    RecPtr(Lsn),
    Char(u8),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Keyword(k) => f.write_str(k.spelling()),
            Token::Ident(s) => write!(f, "{s}"),
            Token::SConst(s) => write!(f, "'{s}'"),
            Token::UConst(n) => write!(f, "{n}"),
            Token::RecPtr(l) => write!(f, "{l}"),
            Token::Char(c) => write!(f, "{}", char::from(*c)),
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Cuts an identifier to [`MAX_IDENTIFIER_BYTES`] at a character boundary, as
/// `truncate_identifier` does; returns the notice PostgreSQL sends when it cuts.
fn truncate_identifier(mut s: String) -> (String, Option<String>) {
    if s.len() <= MAX_IDENTIFIER_BYTES {
        return (s, None);
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let whole = s.clone();
    s.truncate(end);
    let notice = format!("identifier \"{whole}\" will be truncated to \"{s}\"");
    (s, Some(notice))
}

/// The scanner: one token at a time, flex's longest-match rule (a keyword wins a tie with an
/// identifier of the same length).
struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    /// The NOTICEs of identifiers cut to [`MAX_IDENTIFIER_BYTES`], in order.
    truncations: Vec<String>,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner {
            input: input.as_bytes(),
            pos: 0,
            truncations: Vec::new(),
        }
    }

    fn truncated(&mut self, ident: String) -> String {
        let (ident, notice) = truncate_identifier(ident);
        self.truncations.extend(notice);
        ident
    }

    fn next_token(&mut self) -> Result<Option<Token>, CommandError> {
        let s = self.input;
        while self.pos < s.len()
            && matches!(s[self.pos], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
        {
            self.pos += 1;
        }
        let Some(&first) = s.get(self.pos) else {
            return Ok(None);
        };
        let start = self.pos;
        // Candidates, longest wins: {hexdigit}+/{hexdigit}+, {digit}+, {identifier}.
        let hex_end = span(s, start, |b| b.is_ascii_hexdigit());
        if hex_end > start && s.get(hex_end) == Some(&b'/') {
            let lo_end = span(s, hex_end + 1, |b| b.is_ascii_hexdigit());
            if lo_end > hex_end + 1 {
                let ident_end = if is_ident_start(first) {
                    span(s, start, is_ident_cont)
                } else {
                    start
                };
                if lo_end > ident_end {
                    self.pos = lo_end;
                    return recptr(&s[start..hex_end], &s[hex_end + 1..lo_end]).map(Some);
                }
            }
        }
        if first.is_ascii_digit() {
            let end = span(s, start, |b| b.is_ascii_digit());
            self.pos = end;
            let text = std::str::from_utf8(&s[start..end]).unwrap_or("");
            // strtoul: a number beyond 32 bits cannot be a timeline; refuse it rather than wrap.
            let n = text
                .parse::<u32>()
                .map_err(|_| syntax(format!("number out of range: {text}")))?;
            return Ok(Some(Token::UConst(n)));
        }
        if is_ident_start(first) {
            let end = span(s, start, is_ident_cont);
            self.pos = end;
            let word = String::from_utf8_lossy(&s[start..end]).into_owned();
            if let Some((_, k)) = KEYWORDS.iter().find(|(spelling, _)| *spelling == word) {
                return Ok(Some(Token::Keyword(*k)));
            }
            let lowered: String = word
                .chars()
                .map(|c| c.to_ascii_lowercase())
                .collect::<String>();
            return Ok(Some(Token::Ident(self.truncated(lowered))));
        }
        match first {
            b'\'' => self.quoted(b'\'').map(|v| Some(Token::SConst(v))),
            b'"' => {
                let v = self.quoted(b'"')?;
                if v.is_empty() {
                    return Err(syntax("zero-length delimited identifier"));
                }
                Ok(Some(Token::Ident(self.truncated(v))))
            }
            other => {
                self.pos += 1;
                Ok(Some(Token::Char(other)))
            }
        }
    }

    /// A quoted string or identifier starting at `self.pos`; a doubled quote stands for one.
    fn quoted(&mut self, quote: u8) -> Result<String, CommandError> {
        let s = self.input;
        let mut out = Vec::new();
        let mut i = self.pos + 1;
        loop {
            match s.get(i) {
                None => return Err(syntax("unterminated quoted string")),
                Some(&b) if b == quote => {
                    if s.get(i + 1) == Some(&quote) {
                        out.push(quote);
                        i += 2;
                    } else {
                        self.pos = i + 1;
                        return Ok(String::from_utf8_lossy(&out).into_owned());
                    }
                }
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }
}

fn span(s: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while i < s.len() && pred(s[i]) {
        i += 1;
    }
    i
}

fn recptr(hi: &[u8], lo: &[u8]) -> Result<Token, CommandError> {
    let half = |p: &[u8]| {
        std::str::from_utf8(p)
            .ok()
            .and_then(|t| u32::from_str_radix(t, 16).ok())
    };
    match (half(hi), half(lo)) {
        (Some(h), Some(l)) => Ok(Token::RecPtr(Lsn((u64::from(h) << 32) | u64::from(l)))),
        _ => Err(syntax("invalid streaming start location")),
    }
}

/// The parser over the token stream.
struct Parser<'a> {
    scanner: Scanner<'a>,
    peeked: Option<Option<Token>>,
}

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<Option<&Token>, CommandError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.scanner.next_token()?);
        }
        Ok(self.peeked.as_ref().and_then(|t| t.as_ref()))
    }

    fn next(&mut self) -> Result<Option<Token>, CommandError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.scanner.next_token(),
        }
    }

    fn unexpected(t: Option<Token>) -> CommandError {
        match t {
            Some(t) => syntax(format!("syntax error at or near \"{t}\"")),
            None => syntax("syntax error at end of input"),
        }
    }

    /// Takes the next token if it is `t`.
    fn accept(&mut self, t: Token) -> Result<bool, CommandError> {
        let found = self.peek()? == Some(&t);
        if found {
            self.next()?;
        }
        Ok(found)
    }

    fn accept_keyword(&mut self, k: Keyword) -> Result<bool, CommandError> {
        self.accept(Token::Keyword(k))
    }

    fn accept_char(&mut self, c: u8) -> Result<bool, CommandError> {
        self.accept(Token::Char(c))
    }

    /// The next token as `pick` reads it; the grammar's error if it gives the token back.
    fn take<T>(&mut self, pick: impl FnOnce(Token) -> Result<T, Token>) -> Result<T, CommandError> {
        match self.next()? {
            Some(t) => pick(t).map_err(|t| Self::unexpected(Some(t))),
            None => Err(Self::unexpected(None)),
        }
    }

    fn ident(&mut self) -> Result<String, CommandError> {
        self.take(|t| match t {
            Token::Ident(s) => Ok(s),
            t => Err(t),
        })
    }

    /// `var_name: IDENT | var_name '.' IDENT`
    fn var_name(&mut self) -> Result<String, CommandError> {
        let mut name = self.ident()?;
        while self.accept_char(b'.')? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    fn recptr(&mut self) -> Result<Lsn, CommandError> {
        self.take(|t| match t {
            Token::RecPtr(l) => Ok(l),
            t => Err(t),
        })
    }

    fn timeline(&mut self) -> Result<TimelineId, CommandError> {
        match self.next()? {
            Some(Token::UConst(0)) => Err(syntax("invalid timeline 0")),
            Some(Token::UConst(n)) => Ok(TimelineId(n)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// `ident_or_keyword`: an option name may be any identifier or keyword (down-cased).
    fn option_name(&mut self) -> Result<String, CommandError> {
        match self.next()? {
            Some(Token::Ident(s)) => Ok(s),
            Some(Token::Keyword(k)) => Ok(k.spelling().to_ascii_lowercase()),
            other => Err(Self::unexpected(other)),
        }
    }

    /// `'(' generic_option_list ')'`, the opening parenthesis already read.
    fn option_list(&mut self) -> Result<Vec<GenericOption>, CommandError> {
        let mut options = Vec::new();
        loop {
            let name = self.option_name()?;
            let value = match self.peek()? {
                Some(Token::Ident(_)) | Some(Token::SConst(_)) | Some(Token::UConst(_)) => {
                    match self.next()? {
                        Some(Token::Ident(s)) => Some(OptionValue::Ident(s)),
                        Some(Token::SConst(s)) => Some(OptionValue::String(s)),
                        Some(Token::UConst(n)) => Some(OptionValue::Number(n)),
                        _ => None,
                    }
                }
                _ => None,
            };
            options.push(GenericOption { name, value });
            if self.accept_char(b',')? {
                continue;
            }
            match self.next()? {
                Some(Token::Char(b')')) => return Ok(options),
                other => return Err(Self::unexpected(other)),
            }
        }
    }

    /// `create_slot_options`: a parenthesized list, or the legacy keywords.
    fn create_slot_options(&mut self) -> Result<Vec<GenericOption>, CommandError> {
        if self.accept_char(b'(')? {
            return self.option_list();
        }
        let mut options = Vec::new();
        loop {
            let (name, value) = match self.peek()? {
                Some(Token::Keyword(Keyword::ExportSnapshot)) => ("snapshot", Some("export")),
                Some(Token::Keyword(Keyword::NoexportSnapshot)) => ("snapshot", Some("nothing")),
                Some(Token::Keyword(Keyword::UseSnapshot)) => ("snapshot", Some("use")),
                Some(Token::Keyword(Keyword::ReserveWal)) => ("reserve_wal", None),
                Some(Token::Keyword(Keyword::TwoPhase)) => ("two_phase", None),
                _ => return Ok(options),
            };
            self.next()?;
            options.push(GenericOption {
                name: name.to_string(),
                value: value.map(|v| OptionValue::String(v.to_string())),
            });
        }
    }

    fn command(&mut self) -> Result<ReplicationCommand, CommandError> {
        let Some(Token::Keyword(first)) = self.next()? else {
            return Err(CommandError::NotReplicationCommand);
        };
        Ok(match first {
            Keyword::IdentifySystem => ReplicationCommand::IdentifySystem,
            Keyword::Show => ReplicationCommand::Show {
                name: self.var_name()?,
            },
            Keyword::TimelineHistory => ReplicationCommand::TimelineHistory {
                timeline: self.timeline()?,
            },
            Keyword::ReadReplicationSlot => ReplicationCommand::ReadReplicationSlot {
                slot: self.var_name()?,
            },
            Keyword::UploadManifest => ReplicationCommand::UploadManifest,
            Keyword::BaseBackup => {
                let options = if self.accept_char(b'(')? {
                    self.option_list()?
                } else {
                    // The legacy syntax (PostgreSQL 10–14): the server of that major parses it.
                    while self.next()?.is_some() {}
                    Vec::new()
                };
                ReplicationCommand::BaseBackup { options }
            }
            Keyword::CreateReplicationSlot => {
                let slot = self.ident()?;
                let temporary = self.accept_keyword(Keyword::Temporary)?;
                let kind = match self.next()? {
                    Some(Token::Keyword(Keyword::Physical)) => SlotKind::Physical,
                    Some(Token::Keyword(Keyword::Logical)) => SlotKind::Logical {
                        plugin: self.ident()?,
                    },
                    other => return Err(Self::unexpected(other)),
                };
                ReplicationCommand::CreateReplicationSlot {
                    slot,
                    temporary,
                    kind,
                    options: self.create_slot_options()?,
                }
            }
            Keyword::DropReplicationSlot => ReplicationCommand::DropReplicationSlot {
                slot: self.ident()?,
                wait: self.accept_keyword(Keyword::Wait)?,
            },
            Keyword::AlterReplicationSlot => {
                let slot = self.ident()?;
                match self.next()? {
                    Some(Token::Char(b'(')) => {}
                    other => return Err(Self::unexpected(other)),
                }
                ReplicationCommand::AlterReplicationSlot {
                    slot,
                    options: self.option_list()?,
                }
            }
            Keyword::StartReplication => self.start_replication()?,
            _ => return Err(CommandError::NotReplicationCommand),
        })
    }

    fn start_replication(&mut self) -> Result<ReplicationCommand, CommandError> {
        let slot = if self.accept_keyword(Keyword::Slot)? {
            Some(self.ident()?)
        } else {
            None
        };
        if let Some(slot) = &slot {
            if self.accept_keyword(Keyword::Logical)? {
                let start = self.recptr()?;
                if self.accept_char(b'(')? {
                    // Plugin options: skipped (a relay refuses logical replication anyway).
                    let mut depth = 1;
                    while depth > 0 {
                        match self.next()? {
                            Some(Token::Char(b'(')) => depth += 1,
                            Some(Token::Char(b')')) => depth -= 1,
                            Some(_) => {}
                            None => return Err(syntax("syntax error at end of input")),
                        }
                    }
                }
                return Ok(ReplicationCommand::StartLogicalReplication {
                    slot: slot.clone(),
                    start,
                });
            }
        }
        self.accept_keyword(Keyword::Physical)?;
        let start = self.recptr()?;
        let timeline = if self.accept_keyword(Keyword::Timeline)? {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        })
    }
}

/// The first token is one of the command keywords (`replication_scanner_is_replication_command`).
fn starts_a_command(t: &Option<Token>) -> bool {
    matches!(
        t,
        Some(Token::Keyword(
            Keyword::IdentifySystem
                | Keyword::BaseBackup
                | Keyword::StartReplication
                | Keyword::CreateReplicationSlot
                | Keyword::DropReplicationSlot
                | Keyword::AlterReplicationSlot
                | Keyword::ReadReplicationSlot
                | Keyword::TimelineHistory
                | Keyword::UploadManifest
                | Keyword::Show
        ))
    )
}

impl ReplicationCommand {
    /// Parses one command string (a simple Query's text).
    pub fn parse(text: &str) -> Result<ReplicationCommand, CommandError> {
        Self::parse_with_notices(text).map(|(cmd, _)| cmd)
    }

    /// Parses one command string, with the NOTICEs a walsender sends while it scans it
    /// (SQLSTATE 42622: an identifier longer than 63 bytes is cut, and the client is told).
    pub fn parse_with_notices(
        text: &str,
    ) -> Result<(ReplicationCommand, Vec<String>), CommandError> {
        let mut first = Scanner::new(text);
        // A scanner error in the first token (an unterminated quote, a huge number) means the
        // string is not a replication command either.
        let first_token = first.next_token().unwrap_or(None);
        if !starts_a_command(&first_token) {
            return Err(CommandError::NotReplicationCommand);
        }
        let mut p = Parser {
            scanner: Scanner::new(text),
            peeked: None,
        };
        let cmd = p.command()?;
        p.accept_char(b';')?;
        match p.next()? {
            None => Ok((cmd, std::mem::take(&mut p.scanner.truncations))),
            other => Err(Parser::unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> ReplicationCommand {
        ReplicationCommand::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn what_the_clients_send() {
        assert_eq!(parse("IDENTIFY_SYSTEM"), ReplicationCommand::IdentifySystem);
        assert_eq!(
            parse("IDENTIFY_SYSTEM;"),
            ReplicationCommand::IdentifySystem
        );
        assert_eq!(
            parse("SHOW wal_segment_size"),
            ReplicationCommand::Show {
                name: "wal_segment_size".into()
            }
        );
        assert_eq!(
            parse("SHOW data_directory_mode"),
            ReplicationCommand::Show {
                name: "data_directory_mode".into()
            }
        );
        assert_eq!(
            parse("SHOW \"Foo\".bar"),
            ReplicationCommand::Show {
                name: "Foo.bar".into()
            }
        );
        assert_eq!(
            parse("TIMELINE_HISTORY 2"),
            ReplicationCommand::TimelineHistory {
                timeline: TimelineId(2)
            }
        );
        // walreceiver, pg_receivewal, pg_basebackup.
        for (text, slot, start, timeline) in [
            (
                "START_REPLICATION 0/3000000 TIMELINE 1",
                None,
                0x300_0000,
                Some(1),
            ),
            (
                "START_REPLICATION SLOT \"pg_basebackup_4711\" 1A/FF000000 TIMELINE 3",
                Some("pg_basebackup_4711"),
                0x1A_FF00_0000,
                Some(3),
            ),
            ("START_REPLICATION SLOT s PHYSICAL 0/0", Some("s"), 0, None),
        ] {
            assert_eq!(
                parse(text),
                ReplicationCommand::StartReplication {
                    slot: slot.map(str::to_string),
                    start: Lsn(start),
                    timeline: timeline.map(TimelineId)
                },
                "{text}"
            );
        }
        // pg_receivewal 15+: the slot name unquoted, so down-cased.
        assert_eq!(
            parse("READ_REPLICATION_SLOT Archive_1"),
            ReplicationCommand::ReadReplicationSlot {
                slot: "archive_1".into()
            }
        );
        assert_eq!(
            parse("DROP_REPLICATION_SLOT \"s\" WAIT"),
            ReplicationCommand::DropReplicationSlot {
                slot: "s".into(),
                wait: true
            }
        );
        assert_eq!(parse("UPLOAD_MANIFEST"), ReplicationCommand::UploadManifest);
    }

    #[test]
    fn create_slot_both_syntaxes() {
        let reserve = vec![GenericOption {
            name: "reserve_wal".into(),
            value: None,
        }];
        for s in [
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_77\" TEMPORARY PHYSICAL RESERVE_WAL",
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_77\" TEMPORARY PHYSICAL (RESERVE_WAL)",
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_77\" TEMPORARY PHYSICAL  RESERVE_WAL",
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_77\" TEMPORARY PHYSICAL ( RESERVE_WAL)",
        ] {
            assert_eq!(
                parse(s),
                ReplicationCommand::CreateReplicationSlot {
                    slot: "pg_walreceiver_77".into(),
                    temporary: true,
                    kind: SlotKind::Physical,
                    options: reserve.clone()
                },
                "{s}"
            );
        }
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT \"archive\" PHYSICAL"),
            ReplicationCommand::CreateReplicationSlot {
                slot: "archive".into(),
                temporary: false,
                kind: SlotKind::Physical,
                options: vec![]
            }
        );
        let ReplicationCommand::CreateReplicationSlot { options, kind, .. } =
            parse("CREATE_REPLICATION_SLOT l LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE false, FAILOVER)")
        else {
            panic!()
        };
        assert_eq!(
            kind,
            SlotKind::Logical {
                plugin: "pgoutput".into()
            }
        );
        assert_eq!(options.len(), 3);
        assert_eq!(options[0].name, "snapshot");
        assert_eq!(options[0].as_text(), Some("nothing"));
        assert_eq!(options[1].name, "two_phase");
        assert_eq!(options[1].as_bool(), Some(false));
        assert_eq!(options[2].as_bool(), Some(true));
        let opt = |v| GenericOption {
            name: "x".into(),
            value: Some(v),
        };
        assert_eq!(opt(OptionValue::Number(0)).as_bool(), Some(false));
        assert_eq!(opt(OptionValue::Number(7)).as_bool(), None);
        assert_eq!(opt(OptionValue::String("maybe".into())).as_bool(), None);
    }

    #[test]
    fn base_backup_keeps_its_options() {
        let ReplicationCommand::BaseBackup { options } = parse(
            "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')",
        ) else {
            panic!()
        };
        let names: Vec<&str> = options.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "label",
                "progress",
                "checkpoint",
                "wait",
                "manifest",
                "target"
            ]
        );
        assert_eq!(options[5].as_text(), Some("client"));
        assert_eq!(options[3].value, Some(OptionValue::Number(0)));
        // Legacy syntax (10–14) is recognized and left to the server.
        assert_eq!(
            parse("BASE_BACKUP LABEL 'x' PROGRESS FAST WAL NOWAIT MANIFEST 'yes'"),
            ReplicationCommand::BaseBackup { options: vec![] }
        );
        assert_eq!(
            parse("BASE_BACKUP"),
            ReplicationCommand::BaseBackup { options: vec![] }
        );
    }

    #[test]
    fn sql_is_not_a_replication_command() {
        for s in [
            "",
            "   ",
            "SELECT 1",
            "show wal_segment_size",
            "identify_system",
            "Identify_System",
            "IDENTIFY_SYSTEMS",
            "select pg_is_in_recovery()",
            "'unterminated",
            "99999999999999999999",
            "TIMELINE 1",
            "PHYSICAL",
        ] {
            assert_eq!(
                ReplicationCommand::parse(s),
                Err(CommandError::NotReplicationCommand),
                "{s:?}"
            );
        }
    }

    #[test]
    fn syntax_errors() {
        for (s, want) in [
            ("START_REPLICATION", "syntax error at end of input"),
            ("START_REPLICATION 0/1 TIMELINE 0", "invalid timeline 0"),
            ("TIMELINE_HISTORY 0", "invalid timeline 0"),
            (
                "START_REPLICATION 0/1 TIMELINE",
                "syntax error at end of input",
            ),
            (
                "START_REPLICATION nonsense",
                "syntax error at or near \"nonsense\"",
            ),
            ("IDENTIFY_SYSTEM extra", "syntax error at or near \"extra\""),
            ("IDENTIFY_SYSTEM;;", "syntax error at or near \";\""),
            (
                "START_REPLICATION SLOT \"x 0/1",
                "unterminated quoted string",
            ),
            (
                "START_REPLICATION SLOT \"\" 0/1",
                "zero-length delimited identifier",
            ),
            (
                "TIMELINE_HISTORY 4294967296",
                "number out of range: 4294967296",
            ),
            (
                "START_REPLICATION 123456789/0",
                "invalid streaming start location",
            ),
            ("CREATE_REPLICATION_SLOT s", "syntax error at end of input"),
            (
                "CREATE_REPLICATION_SLOT s PHYSICAL (",
                "syntax error at end of input",
            ),
            (
                "CREATE_REPLICATION_SLOT s PHYSICAL (a,)",
                "syntax error at or near \")\"",
            ),
            ("SHOW", "syntax error at end of input"),
            ("SHOW a.", "syntax error at end of input"),
            (
                "ALTER_REPLICATION_SLOT s FAILOVER",
                "syntax error at or near \"failover\"",
            ),
        ] {
            assert_eq!(
                ReplicationCommand::parse(s),
                Err(CommandError::Syntax(want.to_string())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn identifiers_are_folded_and_truncated() {
        let long = "a".repeat(70);
        let ReplicationCommand::DropReplicationSlot { slot, .. } =
            parse(&format!("DROP_REPLICATION_SLOT {long}"))
        else {
            panic!()
        };
        assert_eq!(slot.len(), MAX_IDENTIFIER_BYTES);
        let ReplicationCommand::DropReplicationSlot { slot, .. } =
            parse("DROP_REPLICATION_SLOT \"Has \"\"Quotes\"\"\"")
        else {
            panic!()
        };
        assert_eq!(slot, "Has \"Quotes\"");
        // The cut is reported, as the server's NOTICE 42622 words it; a short name is not.
        let (_, notices) =
            ReplicationCommand::parse_with_notices(&format!("DROP_REPLICATION_SLOT {long}"))
                .unwrap();
        assert_eq!(
            notices,
            vec![format!(
                "identifier \"{long}\" will be truncated to \"{}\"",
                &long[..MAX_IDENTIFIER_BYTES]
            )]
        );
        let (_, notices) =
            ReplicationCommand::parse_with_notices("DROP_REPLICATION_SLOT s").unwrap();
        assert!(notices.is_empty());
        // Hex digits followed by '/' make an LSN even when they look like an identifier.
        assert_eq!(
            parse("START_REPLICATION SLOT s AB/CD"),
            ReplicationCommand::StartReplication {
                slot: Some("s".into()),
                start: Lsn(0xAB_0000_00CD),
                timeline: None
            }
        );
    }

    #[test]
    fn logical_start_is_recognized() {
        assert_eq!(
            parse("START_REPLICATION SLOT \"sub\" LOGICAL 0/16B3748 (proto_version '1', publication_names '\"p\"')"),
            ReplicationCommand::StartLogicalReplication {
                slot: "sub".into(),
                start: Lsn(0x16B3748)
            }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = ReplicationCommand::parse(&s);
        }

        #[test]
        fn arbitrary_commands_never_panic(
            head in prop::sample::select(vec!["START_REPLICATION ", "CREATE_REPLICATION_SLOT ", "SHOW ", "BASE_BACKUP ("]),
            tail in "[A-Za-z0-9_/(),;'\" .]{0,60}",
        ) {
            let _ = ReplicationCommand::parse(&format!("{head}{tail}"));
        }

        #[test]
        fn start_points_round_trip(hi in any::<u32>(), lo in any::<u32>(), tli in 1u32..) {
            let lsn = Lsn((u64::from(hi) << 32) | u64::from(lo));
            let text = crate::command::start_replication(Some("slot_1"), lsn, TimelineId(tli)).unwrap();
            prop_assert_eq!(
                ReplicationCommand::parse(&text),
                Ok(ReplicationCommand::StartReplication {
                    slot: Some("slot_1".into()),
                    start: lsn,
                    timeline: Some(TimelineId(tli)),
                })
            );
        }
    }
}

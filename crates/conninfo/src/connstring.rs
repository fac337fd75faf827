//! Connection strings: libpq's `keyword = value` syntax and `postgresql://` URIs, parsed into the settings
//! they spell out, and written back with libpq's quoting.
//!
//! [`ConnInfo`] is what `PQconninfoParse()` returns: only what the string itself says, no defaults. The
//! parsers follow `conninfo_parse()` and `conninfo_uri_parse_options()` in libpq's `fe-connect.c` byte for
//! byte, including their quirks (see the tests): whitespace is C's `isspace`, a backslash escapes the next
//! character in quoted *and* unquoted values, `requiressl` is translated to `sslmode`, URI query parameter
//! `ssl=true` means `sslmode=require`, and host lists are percent-decoded after the commas are joined.
//! Resolution (service file, environment, defaults) happens in [`crate::ConnectionConfig`].
//!
//! Reference: <https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING>

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::error::ConnInfoError;
use crate::keyword::Keyword;
use crate::password::REDACTED;

type Result<T> = std::result::Result<T, ConnInfoError>;

const URI_DESIGNATOR: &str = "postgresql://";
const SHORT_URI_DESIGNATOR: &str = "postgres://";

/// Settings given explicitly by a connection string (or by the caller), keyed by libpq keyword.
///
/// An empty value is kept: in libpq, `host=''` counts as "given" (it is not replaced from a service file
/// or the environment) and then means "use the default".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    values: BTreeMap<Keyword, String>,
}

impl ConnInfo {
    pub fn new() -> Self {
        ConnInfo::default()
    }

    /// Parses a `keyword=value` connection string or a `postgresql://` / `postgres://` URI, like
    /// `PQconninfoParse()`. A bare word is an error (`missing "=" after …`); use
    /// [`ConnInfo::parse_dbname_or_conninfo`] where a database name is also acceptable.
    pub fn parse(s: &str) -> Result<ConnInfo> {
        if s.contains('\0') {
            return Err(ConnInfoError::NulByte);
        }
        match uri_prefix_length(s) {
            0 => parse_keyword_value(s),
            n => parse_uri(s, n),
        }
    }

    /// Parses what a `dbname` argument may hold (psql's and pg_basebackup's `-d`): a connection string if
    /// it looks like one ([`ConnInfo::is_connection_string`]), otherwise just a database name.
    /// This is libpq's `expand_dbname` rule.
    pub fn parse_dbname_or_conninfo(s: &str) -> Result<ConnInfo> {
        ConnInfo::from_params(&[("dbname", s)], true)
    }

    /// Command-line style settings, as pg_basebackup and psql build them: `dbname` is the `-d` argument
    /// (a connection string or a database name), and `-h`, `-p`, `-U` override it when given and not
    /// empty (`PQsetdbLogin()` semantics). The caller adds what else it needs (pg_basebackup sets
    /// `replication=true` and drops any `dbname`) before resolving.
    pub fn from_command_line(
        dbname: Option<&str>,
        host: Option<&str>,
        port: Option<&str>,
        user: Option<&str>,
    ) -> Result<ConnInfo> {
        let mut info = match dbname {
            Some(d) => ConnInfo::parse_dbname_or_conninfo(d)?,
            None => ConnInfo::new(),
        };
        for (keyword, value) in [
            (Keyword::Host, host),
            (Keyword::Port, port),
            (Keyword::User, user),
        ] {
            if let Some(value) = value {
                if value.contains('\0') {
                    return Err(ConnInfoError::NulByte);
                }
                info.set_if_not_empty(keyword, value);
            }
        }
        Ok(info)
    }

    /// libpq's `recognized_connection_string()`: starts with a URI designator or contains `=`.
    pub fn is_connection_string(s: &str) -> bool {
        uri_prefix_length(s) != 0 || s.contains('=')
    }

    /// Builds settings from keyword/value pairs like `PQconnectdbParams()`: empty values are skipped,
    /// later pairs override earlier ones, unknown keywords are an error. With `expand_dbname`, the first
    /// `dbname` whose value is a connection string is parsed and its settings applied at that position.
    pub fn from_params(params: &[(&str, &str)], expand_dbname: bool) -> Result<ConnInfo> {
        let mut expanded = None;
        if expand_dbname {
            if let Some((_, value)) = params.iter().find(|(k, _)| *k == "dbname") {
                if ConnInfo::is_connection_string(value) {
                    expanded = Some(ConnInfo::parse(value)?);
                }
            }
        }
        let mut info = ConnInfo::new();
        for (name, value) in params {
            if value.is_empty() {
                continue;
            }
            let kw = Keyword::from_name(name)
                .ok_or_else(|| ConnInfoError::InvalidOption(name.to_string()))?;
            if value.contains('\0') {
                return Err(ConnInfoError::NulByte);
            }
            match (kw, expanded.take()) {
                (Keyword::Dbname, Some(parsed)) => {
                    // Everything the string said wins over earlier pairs, empty values included.
                    info.values.extend(parsed.values);
                }
                (_, pending) => {
                    expanded = pending;
                    info.values.insert(kw, value.to_string());
                }
            }
        }
        Ok(info)
    }

    pub fn get(&self, keyword: Keyword) -> Option<&str> {
        self.values.get(&keyword).map(String::as_str)
    }

    /// Sets a value, replacing any earlier one. An empty value is stored (it means "given, use the
    /// default"); use [`ConnInfo::set_if_not_empty`] for `PQconnectdbParams()`-style overrides.
    pub fn set(&mut self, keyword: Keyword, value: impl Into<String>) {
        self.values.insert(keyword, value.into());
    }

    /// Sets a value only if it is not empty, like command-line overrides in libpq clients.
    pub fn set_if_not_empty(&mut self, keyword: Keyword, value: &str) {
        if !value.is_empty() {
            self.set(keyword, value);
        }
    }

    pub fn remove(&mut self, keyword: Keyword) -> Option<String> {
        self.values.remove(&keyword)
    }

    pub fn contains(&self, keyword: Keyword) -> bool {
        self.values.contains_key(&keyword)
    }

    /// The settings in libpq's keyword order. Values of secret keywords are included: don't log them.
    pub fn iter(&self) -> impl Iterator<Item = (Keyword, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Applies `other` on top of `self`: its non-empty values win.
    pub fn overlay(&mut self, other: &ConnInfo) {
        for (k, v) in other.iter() {
            self.set_if_not_empty(k, v);
        }
    }

    /// The settings as a `keyword=value` connection string that libpq parses back to the same settings.
    /// Contains secrets; for logs use `Display`, which redacts them.
    pub fn to_connection_string(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.iter() {
            push_pair(&mut out, k, v);
        }
        out
    }
}

impl fmt::Display for ConnInfo {
    /// The connection string with `password` and `sslpassword` shown as `********`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        for (k, v) in self.iter() {
            if k.is_secret() {
                push_pair(&mut out, k, REDACTED);
            } else {
                push_pair(&mut out, k, v);
            }
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

/// Appends ` keyword=value` (no leading space when `out` is empty), quoting the value if needed.
pub(crate) fn push_pair(out: &mut String, keyword: Keyword, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(keyword.name());
    out.push('=');
    out.push_str(&quote_value(value));
}

/// Quotes a value for a `keyword=value` connection string the way libpq's own tools do
/// (`appendConnStrVal()`): values made only of ASCII letters, digits, `_` and `.` are written bare,
/// anything else (including the empty string) in single quotes with `'` and `\` backslash-escaped.
pub fn quote_value(value: &str) -> Cow<'_, str> {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if plain {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    Cow::Owned(out)
}

fn uri_prefix_length(s: &str) -> usize {
    if s.starts_with(URI_DESIGNATOR) {
        URI_DESIGNATOR.len()
    } else if s.starts_with(SHORT_URI_DESIGNATOR) {
        SHORT_URI_DESIGNATOR.len()
    } else {
        0
    }
}

/// C's `isspace()` in the "C" locale, which is what libpq's parser uses.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Why a keyword could not be stored; callers turn it into the right message for their syntax.
enum StoreError {
    Unknown(String),
}

/// libpq's `conninfo_storeval()`: translates the obsolete `requiressl`, looks the keyword up, replaces any
/// earlier value.
fn store(
    info: &mut ConnInfo,
    name: &str,
    value: String,
) -> std::result::Result<Keyword, StoreError> {
    let (name, value) = if name == "requiressl" {
        let mode = if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        };
        ("sslmode", mode.to_string())
    } else {
        (name, value)
    };
    let kw = Keyword::from_name(name).ok_or_else(|| StoreError::Unknown(name.to_string()))?;
    info.values.insert(kw, value);
    Ok(kw)
}

/// `keyword = value` pairs separated by whitespace (libpq's `conninfo_parse()`).
fn parse_keyword_value(s: &str) -> Result<ConnInfo> {
    let b = s.as_bytes();
    let mut info = ConnInfo::new();
    let mut i = 0;
    // Set after an unquoted password value: the next token is then most likely the rest of a password
    // that contained a space, so it must not be echoed in an error message.
    let mut after_unquoted_secret = false;

    while i < b.len() {
        if is_c_space(b[i]) {
            i += 1;
            continue;
        }

        // The keyword runs to '=' or whitespace; whitespace may separate it from the '='.
        let name_start = i;
        let mut name_end = None;
        while i < b.len() {
            if b[i] == b'=' {
                break;
            }
            if is_c_space(b[i]) {
                name_end = Some(i);
                while i < b.len() && is_c_space(b[i]) {
                    i += 1;
                }
                break;
            }
            i += 1;
        }
        // Both ends are at ASCII bytes or the end of the string, so this slice is on char boundaries.
        let name = s.get(name_start..name_end.unwrap_or(i)).unwrap_or_default();
        if i >= b.len() || b[i] != b'=' {
            return Err(if after_unquoted_secret {
                ConnInfoError::MissingEqualsAfterSecret
            } else {
                ConnInfoError::MissingEquals(name.to_string())
            });
        }
        i += 1;
        while i < b.len() && is_c_space(b[i]) {
            i += 1;
        }

        let mut value = Vec::new();
        let quoted = i < b.len() && b[i] == b'\'';
        if quoted {
            i += 1;
            loop {
                let Some(&c) = b.get(i) else {
                    return Err(ConnInfoError::UnterminatedQuote);
                };
                i += 1;
                match c {
                    b'\\' => {
                        if let Some(&escaped) = b.get(i) {
                            value.push(escaped);
                            i += 1;
                        }
                    }
                    b'\'' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(&c) = b.get(i) {
                i += 1;
                if is_c_space(c) {
                    break;
                }
                if c == b'\\' {
                    if let Some(&escaped) = b.get(i) {
                        value.push(escaped);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
        }
        // Only ASCII backslashes were dropped, so the bytes are still UTF-8; the lossy conversion is a
        // no-op that cannot panic.
        let value = String::from_utf8_lossy(&value).into_owned();

        match store(&mut info, name, value) {
            Ok(kw) => after_unquoted_secret = !quoted && kw.is_secret(),
            Err(StoreError::Unknown(name)) => {
                return Err(if after_unquoted_secret {
                    ConnInfoError::InvalidOptionAfterSecret
                } else {
                    ConnInfoError::InvalidOption(name)
                });
            }
        }
    }
    Ok(info)
}

/// `text` (an error message, an argument) with every password it might hold replaced by
/// `********`: those of connection URIs in it (`postgres://user:secret@…`, `?password=…`) and the
/// values of `password=` / `sslpassword=` keywords — for messages that repeat what the user typed
/// where a connection string was not expected (a parser's "unexpected argument").
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let token_end = |s: &str| {
        s.find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"'))
            .unwrap_or(s.len())
    };
    while let Some(at) = [URI_DESIGNATOR, SHORT_URI_DESIGNATOR]
        .iter()
        .filter_map(|d| rest.find(d))
        .min()
    {
        out.push_str(&rest[..at]);
        let token = &rest[at..];
        let end = token_end(token);
        out.push_str(&redact_uri(&token[..end]));
        rest = &token[end..];
    }
    out.push_str(rest);
    // key=value secrets, wherever they are (a URI's query was done above; done again, harmless).
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let value_start = at + "password=".len();
        redacted.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let end = match value.strip_prefix('\'') {
            // A quoted value: up to the closing quote (backslash escapes skipped).
            Some(quoted) => {
                let mut escaped = false;
                quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let close = c == '\'' && !escaped;
                        escaped = c == '\\' && !escaped;
                        close
                    })
                    .map_or(value.len(), |(i, _)| i + 2)
            }
            None => value
                .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '&'))
                .unwrap_or(value.len()),
        };
        if end > 0 {
            redacted.push_str(REDACTED);
        }
        rest = &value[end..];
    }
    redacted.push_str(rest);
    redacted
}

/// The URI with any password (in `user:password@` or a `password=` / `sslpassword=` query parameter)
/// replaced by `********`, for error messages.
pub(crate) fn redact_uri(uri: &str) -> String {
    let prefix = uri_prefix_length(uri);
    let rest = &uri[prefix..];
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..prefix]);

    let userinfo_end = rest
        .find(['@', '/'])
        .filter(|&i| rest.as_bytes()[i] == b'@');
    let after_userinfo = match userinfo_end {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };

    match after_userinfo.find('?') {
        None => out.push_str(after_userinfo),
        Some(q) => {
            out.push_str(&after_userinfo[..=q]);
            let params: Vec<String> = after_userinfo[q + 1..]
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_param(key) => format!("{key}={REDACTED}"),
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
    }
    out
}

fn is_secret_param(raw_key: &str) -> bool {
    match percent_decode(raw_key, false) {
        Ok(key) => Keyword::from_name(&key).is_some_and(Keyword::is_secret),
        Err(_) => false,
    }
}

/// `postgresql://[user[:password]@][netloc][:port][,...][/dbname][?param1=value1&...]`
/// (libpq's `conninfo_uri_parse_options()`).
fn parse_uri(uri: &str, prefix_len: usize) -> Result<ConnInfo> {
    let b = uri.as_bytes();
    let len = b.len();
    let mut info = ConnInfo::new();
    let start = prefix_len;

    // Look ahead for a user[:password]@ part before the first '/'.
    let mut p = start;
    while p < len && b[p] != b'@' && b[p] != b'/' {
        p += 1;
    }
    if p < len && b[p] == b'@' {
        let at = p;
        let user_end = (start..at).find(|&i| b[i] == b':').unwrap_or(at);
        let user = &uri[start..user_end];
        if !user.is_empty() {
            info.set(Keyword::User, percent_decode(user, false)?);
        }
        if user_end < at {
            let password = &uri[user_end + 1..at];
            if !password.is_empty() {
                info.set(Keyword::Password, percent_decode(password, true)?);
            }
        }
        p = at + 1;
    } else {
        p = start;
    }

    // One or more netloc[:port] separated by commas. The pieces are joined with commas and decoded as a
    // whole afterwards, as libpq does (so "%2C" in a host name also separates hosts).
    let mut hosts = String::new();
    let mut ports = String::new();
    let mut terminator;
    loop {
        let host;
        if p < len && b[p] == b'[' {
            p += 1;
            let host_start = p;
            while p < len && b[p] != b']' {
                p += 1;
            }
            if p >= len {
                return Err(ConnInfoError::UnterminatedIpv6(redact_uri(uri)));
            }
            if p == host_start {
                return Err(ConnInfoError::EmptyIpv6(redact_uri(uri)));
            }
            host = &uri[host_start..p];
            p += 1;
            if p < len && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                return Err(ConnInfoError::UnexpectedUriCharacter {
                    ch: uri[p..].chars().next().unwrap_or('?'),
                    position: p + 1,
                    uri: redact_uri(uri),
                });
            }
        } else {
            let host_start = p;
            while p < len && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            host = &uri[host_start..p];
        }
        terminator = b.get(p).copied();
        hosts.push_str(host);

        if terminator == Some(b':') {
            p += 1;
            let port_start = p;
            while p < len && !matches!(b[p], b'/' | b'?' | b',') {
                p += 1;
            }
            terminator = b.get(p).copied();
            ports.push_str(&uri[port_start..p]);
        }

        if terminator != Some(b',') {
            break;
        }
        p += 1;
        hosts.push(',');
        ports.push(',');
    }

    if !hosts.is_empty() {
        info.set(Keyword::Host, percent_decode(&hosts, false)?);
    }
    if !ports.is_empty() {
        info.set(Keyword::Port, percent_decode(&ports, false)?);
    }

    if terminator.is_some_and(|c| c != b'?') {
        // A '/' starts the database name, which runs to '?'.
        p += 1;
        let dbname_start = p;
        while p < len && b[p] != b'?' {
            p += 1;
        }
        terminator = b.get(p).copied();
        let dbname = &uri[dbname_start..p];
        // An empty name is left unset, so PGDATABASE still applies.
        if !dbname.is_empty() {
            info.set(Keyword::Dbname, percent_decode(dbname, false)?);
        }
    }

    if terminator.is_some() {
        parse_uri_params(&uri[p + 1..], &mut info)?;
    }
    Ok(info)
}

/// `key=value&key=value` after the `?` (libpq's `conninfo_uri_parse_params()`).
fn parse_uri_params(params: &str, info: &mut ConnInfo) -> Result<()> {
    let b = params.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let key_start = i;
        let mut equals = None;
        let (key, value) = loop {
            match b.get(i) {
                Some(b'=') => {
                    if let Some(e) = equals {
                        return Err(ConnInfoError::ExtraUriSeparator(
                            params[key_start..e].to_string(),
                        ));
                    }
                    equals = Some(i);
                    i += 1;
                }
                None | Some(b'&') => {
                    let end = i;
                    if i < b.len() {
                        i += 1;
                    }
                    match equals {
                        None => {
                            return Err(ConnInfoError::MissingUriSeparator(
                                params[key_start..end].to_string(),
                            ))
                        }
                        Some(e) => break (&params[key_start..e], &params[e + 1..end]),
                    }
                }
                Some(_) => i += 1,
            }
        };

        let key = percent_decode(key, false)?;
        let secret = Keyword::from_name(&key).is_some_and(Keyword::is_secret);
        let value = percent_decode(value, secret)?;
        // JDBC compatibility, as in libpq.
        let (key, value) = if key == "ssl" && value == "true" {
            ("sslmode".to_string(), "require".to_string())
        } else {
            (key, value)
        };
        if let Err(StoreError::Unknown(name)) = store(info, &key, value) {
            return Err(ConnInfoError::InvalidUriParameter(name));
        }
    }
    Ok(())
}

/// libpq's `conninfo_uri_decode()`: `%XX` with two hex digits (either case) becomes that byte; `%00`
/// and malformed tokens are errors. The result must be UTF-8. Error messages show `text` unless `secret`.
pub(crate) fn percent_decode(text: &str, secret: bool) -> Result<String> {
    let shown = || {
        if secret {
            REDACTED.to_string()
        } else {
            text.to_string()
        }
    };
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hi = b.get(i + 1).and_then(|&c| hex_digit(c));
        let lo = b.get(i + 2).and_then(|&c| hex_digit(c));
        match (hi, lo) {
            (Some(hi), Some(lo)) => {
                let byte = (hi << 4) | lo;
                if byte == 0 {
                    return Err(ConnInfoError::PercentEncodedNul(shown()));
                }
                out.push(byte);
                i += 3;
            }
            _ => return Err(ConnInfoError::InvalidPercentEncoding(shown())),
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::PercentDecodedNotUtf8(shown()))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_text_hides_passwords_of_uris_and_keywords() {
        use super::redact_text;
        assert_eq!(
            redact_text(
                "unexpected argument 'postgresql://rep:TopSecret@db.example.com/postgres' found"
            ),
            "unexpected argument 'postgresql://rep:********@db.example.com/postgres' found"
        );
        assert_eq!(
            redact_text("unexpected argument 'password=TopSecret' found"),
            "unexpected argument 'password=********' found"
        );
        assert_eq!(
            redact_text("host=x password='a b\\' c' sslpassword=k user=u"),
            "host=x password=******** sslpassword=******** user=u"
        );
        assert_eq!(
            redact_text("postgres://h/db?user=u&password=s3cret&sslmode=require"),
            "postgres://h/db?user=u&password=********&sslmode=require"
        );
        assert_eq!(
            redact_text("no secret here: host=db"),
            "no secret here: host=db"
        );
        assert_eq!(redact_text("PASSWORD=x"), "PASSWORD=********");
    }

    use super::*;
    use Keyword::*;

    fn parse(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        match ConnInfo::parse(s) {
            Ok(info) => panic!("{s:?} parsed as {info:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn pairs(info: &ConnInfo) -> Vec<(Keyword, String)> {
        info.iter().map(|(k, v)| (k, v.to_string())).collect()
    }

    fn kv(list: &[(Keyword, &str)]) -> Vec<(Keyword, String)> {
        list.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn keyword_value_table() {
        let cases: &[(&str, &[(Keyword, &str)])] = &[
            ("", &[]),
            ("   \t\n ", &[]),
            ("host=localhost", &[(Host, "localhost")]),
            (
                "host = localhost   port=5433",
                &[(Host, "localhost"), (Port, "5433")],
            ),
            ("host =localhost", &[(Host, "localhost")]),
            ("host= localhost", &[(Host, "localhost")]),
            ("host=''", &[(Host, "")]),
            ("host=", &[(Host, "")]),
            ("host= port=1", &[(Host, "port=1")]),
            ("password='a b'", &[(Password, "a b")]),
            (r"password='it\'s'", &[(Password, "it's")]),
            (r"password='back\\slash'", &[(Password, r"back\slash")]),
            (r"password=un\ quoted", &[(Password, "un quoted")]),
            (r"password=a\'b", &[(Password, "a'b")]),
            (r"password='\x'", &[(Password, "x")]),
            ("dbname=a=b", &[(Dbname, "a=b")]),
            ("dbname='x'host=h", &[(Dbname, "x"), (Host, "h")]),
            ("host=a host=b", &[(Host, "b")]),
            ("requiressl=1", &[(SslMode, "require")]),
            ("requiressl=0", &[(SslMode, "prefer")]),
            ("requiressl=yes", &[(SslMode, "prefer")]),
            (
                "application_name='héllo wörld'",
                &[(ApplicationName, "héllo wörld")],
            ),
            ("host=a\u{0b}port=1", &[(Host, "a"), (Port, "1")]),
            (
                "options='-c wal_sender_timeout=0'",
                &[(Options, "-c wal_sender_timeout=0")],
            ),
            ("replication=database", &[(Replication, "database")]),
            // A trailing backslash in an unquoted value is dropped, as in libpq.
            (r"user=a\", &[(User, "a")]),
        ];
        for (input, want) in cases {
            assert_eq!(pairs(&parse(input)), kv(want), "input {input:?}");
        }
    }

    #[test]
    fn keyword_value_errors() {
        let cases = [
            (
                "host",
                "missing \"=\" after \"host\" in connection info string",
            ),
            (
                "host localhost",
                "missing \"=\" after \"host\" in connection info string",
            ),
            (
                "mydb",
                "missing \"=\" after \"mydb\" in connection info string",
            ),
            ("=x", "invalid connection option \"\""),
            ("foo=bar", "invalid connection option \"foo\""),
            ("Host=x", "invalid connection option \"Host\""),
            (
                "host='x",
                "unterminated quoted string in connection info string",
            ),
            (
                r"host='x\'",
                "unterminated quoted string in connection info string",
            ),
            (
                r"host='x\",
                "unterminated quoted string in connection info string",
            ),
            (
                "host=x\0",
                "connection info string contains a NUL byte; remove it",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(err(input), want, "input {input:?}");
        }
    }

    #[test]
    fn errors_never_echo_the_rest_of_an_unquoted_password() {
        for input in [
            "host=h password=correct horse",
            "password=correct horse=battery",
            "user=u password=correct  horse port=1",
        ] {
            let msg = err(input);
            assert!(!msg.contains("horse"), "{input:?} -> {msg}");
            assert!(msg.contains("quote values that contain spaces"), "{msg}");
        }
        // A quoted password followed by a real mistake is reported normally.
        assert_eq!(
            err("password='a b' bogus=1"),
            "invalid connection option \"bogus\""
        );
    }

    #[test]
    fn uri_table() {
        let cases: &[(&str, &[(Keyword, &str)])] = &[
            ("postgresql://", &[]),
            ("postgres://", &[]),
            ("postgresql://localhost", &[(Host, "localhost")]),
            ("postgresql://localhost:5433", &[(Host, "localhost"), (Port, "5433")]),
            ("postgresql://localhost/mydb", &[(Dbname, "mydb"), (Host, "localhost")]),
            (
                "postgresql://user@localhost",
                &[(User, "user"), (Host, "localhost")],
            ),
            (
                "postgresql://user:secret@localhost",
                &[(User, "user"), (Password, "secret"), (Host, "localhost")],
            ),
            ("postgresql://:secret@h", &[(Password, "secret"), (Host, "h")]),
            ("postgresql://user:@h", &[(User, "user"), (Host, "h")]),
            (
                "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
                &[
                    (User, "other"),
                    (ConnectTimeout, "10"),
                    (Dbname, "otherdb"),
                    (Host, "localhost"),
                    (ApplicationName, "myapp"),
                ],
            ),
            (
                "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
                &[
                    (Dbname, "somedb"),
                    (Host, "host1,host2"),
                    (Port, "123,456"),
                    (ApplicationName, "myapp"),
                    (TargetSessionAttrs, "any"),
                ],
            ),
            ("postgresql://h1,h2:5433", &[(Host, "h1,h2"), (Port, ",5433")]),
            ("postgresql://[::1]", &[(Host, "::1")]),
            ("postgresql://[::1]:5433/db", &[(Dbname, "db"), (Host, "::1"), (Port, "5433")]),
            (
                "postgresql://[2001:db8::1234]:1,[::1]",
                &[(Host, "2001:db8::1234,::1"), (Port, "1,")],
            ),
            ("postgresql://[::1]?sslmode=require", &[(Host, "::1"), (SslMode, "require")]),
            ("postgresql:///mydb", &[(Dbname, "mydb")]),
            (
                "postgresql:///mydb?host=/var/lib/postgresql",
                &[(Dbname, "mydb"), (Host, "/var/lib/postgresql")],
            ),
            ("postgresql://%2Fvar%2Frun%2Fpostgresql", &[(Host, "/var/run/postgresql")]),
            (
                "postgresql://%2Fvar%2Frun%2Fpostgresql:5433/db",
                &[(Dbname, "db"), (Host, "/var/run/postgresql"), (Port, "5433")],
            ),
            (
                "postgresql://us%65r:p%40ss%3Aword@h/d%62",
                &[(User, "user"), (Password, "p@ss:word"), (Dbname, "db"), (Host, "h")],
            ),
            ("postgresql://h/", &[(Host, "h")]),
            ("postgresql://h/db/more", &[(Dbname, "db/more"), (Host, "h")]),
            ("postgresql://h?", &[(Host, "h")]),
            ("postgresql://h?sslmode=verify-full&", &[(Host, "h"), (SslMode, "verify-full")]),
            ("postgresql://h?ssl=true", &[(Host, "h"), (SslMode, "require")]),
            ("postgresql://h?requiressl=1", &[(Host, "h"), (SslMode, "require")]),
            (
                "postgresql://h?options=-c%20synchronous_commit%3Doff",
                &[(Host, "h"), (Options, "-c synchronous_commit=off")],
            ),
            ("postgresql://h?app%6cication_name=x", &[(Host, "h"), (ApplicationName, "x")]),
            ("postgresql://h?host=", &[(Host, "")]),
            ("postgresql://a%2Cb", &[(Host, "a,b")]),
            ("postgresql://ünï", &[(Host, "ünï")]),
        ];
        for (input, want) in cases {
            assert_eq!(pairs(&parse(input)), kv(want), "input {input:?}");
        }
    }

    #[test]
    fn uri_errors() {
        let cases = [
            (
                "postgresql://[::1",
                "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"postgresql://[::1\"",
            ),
            (
                "postgresql://[]",
                "IPv6 host address may not be empty in URI: \"postgresql://[]\"",
            ),
            (
                "postgresql://[::1]x",
                "unexpected character \"x\" at position 19 in URI (expected \":\" or \"/\"): \"postgresql://[::1]x\"",
            ),
            (
                "postgresql://h?sslmode",
                "missing key/value separator \"=\" in URI query parameter: \"sslmode\"",
            ),
            (
                "postgresql://h?a=1&&b=2",
                "invalid URI query parameter: \"a\"",
            ),
            (
                "postgresql://h?sslmode=require&&port=1",
                "missing key/value separator \"=\" in URI query parameter: \"\"",
            ),
            (
                "postgresql://h?sslmode=a=b",
                "extra key/value separator \"=\" in URI query parameter: \"sslmode\"",
            ),
            ("postgresql://h?foo=bar", "invalid URI query parameter: \"foo\""),
            ("postgresql://h?ssl=false", "invalid URI query parameter: \"ssl\""),
            ("postgresql://h%zz", "invalid percent-encoded token: \"h%zz\""),
            ("postgresql://h%4", "invalid percent-encoded token: \"h%4\""),
            ("postgresql://h/%", "invalid percent-encoded token: \"%\""),
            (
                "postgresql://h/a%00b",
                "forbidden value %00 in percent-encoded value: \"a%00b\"",
            ),
            (
                "postgresql://h/%ff",
                "percent-decoded value is not valid UTF-8: \"%ff\"",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(err(input), want, "input {input:?}");
        }
    }

    #[test]
    fn uri_errors_never_contain_the_password() {
        for input in [
            "postgresql://u:s3cr3t@[::1",
            "postgresql://u:s3cr3t@[]",
            "postgresql://u:s3cr3t@[::1]x",
            "postgresql://u:s3cr3t%zz@h",
            "postgresql://u:s3cr3t%00@h",
            "postgresql://u:s3cr3t%ff@h",
            "postgresql://h?password=s3cr3t%zz",
            "postgresql://h?sslpassword=s3cr3t%00",
            "postgresql://[::1]x?password=s3cr3t",
            "postgresql://[::1]x?pass%77ord=s3cr3t",
        ] {
            let msg = err(input);
            assert!(!msg.contains("s3cr3t"), "{input:?} -> {msg}");
        }
        assert_eq!(
            err("postgresql://u:s3cr3t@[::1]x"),
            "unexpected character \"x\" at position 28 in URI (expected \":\" or \"/\"): \"postgresql://u:********@[::1]x\""
        );
    }

    #[test]
    fn display_and_debug_redact_secrets() {
        let info = parse("user=u password='p w' sslpassword=k host=h");
        let shown = format!("{info} {info:?} {info:#?}");
        assert!(!shown.contains("p w") && !shown.contains("=k"), "{shown}");
        assert_eq!(
            info.to_string(),
            "user=u password='********' host=h sslpassword='********'"
        );
        assert_eq!(
            info.to_connection_string(),
            "user=u password='p w' host=h sslpassword=k"
        );
    }

    #[test]
    fn quoting_matches_append_conn_str_val() {
        assert_eq!(quote_value("abc_1.2"), "abc_1.2");
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value("it's"), r"'it\'s'");
        assert_eq!(quote_value(r"a\b"), r"'a\\b'");
        assert_eq!(quote_value("/var/run/postgresql"), "'/var/run/postgresql'");
        assert_eq!(quote_value("héllo"), "'héllo'");
    }

    #[test]
    fn bare_dbname_and_expansion() {
        assert_eq!(
            pairs(&ConnInfo::parse_dbname_or_conninfo("mydb").unwrap()),
            kv(&[(Dbname, "mydb")])
        );
        assert_eq!(
            pairs(&ConnInfo::parse_dbname_or_conninfo("host=h dbname=x").unwrap()),
            kv(&[(Dbname, "x"), (Host, "h")])
        );
        assert_eq!(
            pairs(&ConnInfo::parse_dbname_or_conninfo("postgresql://h").unwrap()),
            kv(&[(Host, "h")])
        );
        assert!(ConnInfo::parse_dbname_or_conninfo("").unwrap().is_empty());
        assert!(ConnInfo::is_connection_string("a=b"));
        assert!(ConnInfo::is_connection_string("postgres://"));
        assert!(!ConnInfo::is_connection_string("postgresql:/x"));
        assert!(!ConnInfo::is_connection_string("my db"));
    }

    #[test]
    fn from_params_follows_pqconnectdbparams() {
        // Later pairs override; empty values are skipped; the expanded dbname applies in place.
        let info = ConnInfo::from_params(
            &[
                ("host", "a"),
                ("port", "1"),
                ("dbname", "host=b user=''"),
                ("port", "2"),
                ("user", ""),
            ],
            true,
        )
        .unwrap();
        assert_eq!(pairs(&info), kv(&[(User, ""), (Host, "b"), (Port, "2")]));
        // Without expansion dbname is just a name.
        let info = ConnInfo::from_params(&[("dbname", "host=b")], false).unwrap();
        assert_eq!(pairs(&info), kv(&[(Dbname, "host=b")]));
        // Only the first dbname is expanded.
        let info =
            ConnInfo::from_params(&[("dbname", "port=3"), ("dbname", "host=x")], true).unwrap();
        assert_eq!(pairs(&info), kv(&[(Dbname, "host=x"), (Port, "3")]));
        assert_eq!(
            ConnInfo::from_params(&[("requiressl", "1")], false)
                .unwrap_err()
                .to_string(),
            "invalid connection option \"requiressl\""
        );
    }

    #[test]
    fn overlay_keeps_non_empty_values() {
        let mut base = parse("host=a port=1 user=u");
        base.overlay(&parse("host=b port='' dbname=d"));
        assert_eq!(
            pairs(&base),
            kv(&[(User, "u"), (Dbname, "d"), (Host, "b"), (Port, "1")])
        );
    }

    #[test]
    fn round_trip_through_connection_string() {
        let info = parse(r"host='/tmp/a b' password='x\'y\\z' application_name=''");
        assert_eq!(parse(&info.to_connection_string()), info);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn keyword() -> impl Strategy<Value = Keyword> {
            proptest::sample::select(Keyword::ALL.to_vec())
        }

        proptest! {
            #[test]
            fn parse_never_panics(s in any::<String>()) {
                let _ = ConnInfo::parse(&s);
                let _ = ConnInfo::parse_dbname_or_conninfo(&s);
            }

            #[test]
            fn uri_parse_never_panics(s in "(postgres|postgresql)://[\\[\\]:@/?&=,%0-9a-fA-Fé ]{0,40}") {
                let _ = ConnInfo::parse(&s);
                let _ = redact_uri(&s);
            }

            #[test]
            fn quote_then_parse_round_trips(
                values in proptest::collection::btree_map(keyword(), "[^\\x00]{0,20}", 0..8)
            ) {
                let mut info = ConnInfo::new();
                for (k, v) in &values {
                    info.set(*k, v.clone());
                }
                let text = info.to_connection_string();
                let back = ConnInfo::parse(&text).unwrap();
                prop_assert_eq!(back, info);
            }

            #[test]
            fn uri_password_never_in_errors(pw in "[a-z]{8,12}", tail in "[\\[\\]%:/?=&a-z0-9]{0,12}") {
                let uri = format!("postgresql://u:{pw}@{tail}");
                if let Err(e) = ConnInfo::parse(&uri) {
                    prop_assert!(!e.to_string().contains(&pw), "{}", e);
                }
            }
        }
    }
}

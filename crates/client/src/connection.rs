//! One connection to a PostgreSQL server: startup, TLS negotiation, authentication, then messages.
//!
//! [`Connection::read_message`] is cancellation-safe (bytes are read into an owned buffer and a message is
//! only returned once complete), so a replication task can `select!` between it and its outgoing queue.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use tracing::{debug, info, warn};
use walrelay_protocol::message::{Authentication, BackendMessage, ErrorFields, MAX_MESSAGE_LEN};
use walrelay_protocol::ServerVersion;

use crate::error::{ClientError, Result, ServerError};
use crate::params::{
    AuthMethod, ChannelBindingMode, ConnectParams, Endpoint, ReplicationMode, SessionAttrs, SslMode,
};
use crate::stream::Stream;
use crate::tls;

/// The result of one statement of a simple query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    /// Values as the server sent them (text format); `None` is NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    pub tag: String,
}

impl QueryResult {
    /// The raw value of `column` in row `row`, if present and not NULL.
    pub fn get_bytes(&self, row: usize, column: &str) -> Option<&Bytes> {
        let idx = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(idx)?.as_ref()
    }

    /// The value of `column` in row `row` as text, if present, not NULL and valid UTF-8.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        std::str::from_utf8(self.get_bytes(row, column)?).ok()
    }

    /// The value at (row, column index) as text.
    pub fn get_idx(&self, row: usize, col: usize) -> Option<&str> {
        std::str::from_utf8(self.rows.get(row)?.get(col)?.as_ref()?).ok()
    }
}

/// How many server notices are kept for [`Connection::take_notices`].
const MAX_KEPT_NOTICES: usize = 1000;
/// Size of a read buffer: room for two of the walsender's largest WAL messages (`MAX_SEND_SIZE`,
/// 128 kB of WAL, plus the CopyData and XLogData headers), so that a message pins half a buffer
/// rather than a whole one (a 256 kB buffer held one such message and the start of the next,
/// which moved on; every queued message then kept 256 kB alive). A message larger than that gets a
/// buffer of its own size.
const READ_BUFFER: usize = 2 * (128 * 1024 + 1024);
/// Free space below which reading moves on to another buffer rather than into a sliver of tail.
const MIN_READ_SPACE: usize = 64 * 1024;
/// Retired read buffers kept for reuse, in bytes: enough for what a connection's consumers hold at
/// once (the base backup's extraction queue, about 4 MB; the WAL disk queue, 64 messages of at
/// most 128 kB), so that steady streaming allocates nothing.
const MAX_RETIRED_READ_BYTES: usize = 8 * 1024 * 1024;

pub struct Connection {
    stream: Stream,
    read_buf: ReadBuffer,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    server_version: ServerVersion,
    endpoint: Endpoint,
    process_id: i32,
    notices: VecDeque<ErrorFields>,
    /// The status byte of the last ReadyForQuery: `I` idle, `T` in a transaction block, `E` in a
    /// failed transaction block.
    transaction_status: u8,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("server_version", &self.server_version)
            .field("tls", &self.stream.is_tls())
            .field("backend_pid", &self.process_id)
            .finish_non_exhaustive()
    }
}

/// Whether to ask for TLS on an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsAttempt {
    Plain,
    Tls,
}

impl Connection {
    /// Connects to the first endpoint that accepts us, trying them in order.
    pub async fn connect(params: &ConnectParams) -> Result<Connection> {
        if params.endpoints.is_empty() {
            return Err(ClientError::Config("no host to connect to".into()));
        }
        if params.channel_binding == ChannelBindingMode::Require
            && params.tls.mode == SslMode::Disable
        {
            return Err(ClientError::Config(
                "channel_binding=require needs TLS, but sslmode=disable".into(),
            ));
        }
        // prefer-standby: a standby if any host is one, else any server (libpq's second pass).
        let passes = match params.target_session_attrs {
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            a => vec![a],
        };
        let mut errors = Vec::new();
        let endpoints = crate::unresponsive::in_trying_order(&params.endpoints);
        for wanted in passes {
            for &endpoint in &endpoints {
                let attempt = Self::connect_endpoint(params, endpoint).await;
                match &attempt {
                    Err(ClientError::ConnectTimeout { .. }) if params.endpoints.len() > 1 => {
                        crate::unresponsive::note_silent(endpoint)
                    }
                    Ok(_) => crate::unresponsive::note_answered(endpoint),
                    Err(_) => {}
                }
                match attempt {
                    Ok(mut c) => match c.session_matches(wanted).await {
                        Ok(true) => {
                            c.apply_settings_since(params).await?;
                            return Ok(c);
                        }
                        Ok(false) => {
                            debug!(%endpoint, wanted = wanted.as_str(), "server does not match target_session_attrs");
                            c.close().await;
                        }
                        Err(e) => errors.push(e),
                    },
                    Err(e) => {
                        debug!(%endpoint, error = %e, "connection attempt failed");
                        errors.push(e);
                    }
                }
            }
        }
        if errors.is_empty() {
            return Err(ClientError::NoMatchingServer {
                hosts: params.endpoints.len(),
                wanted: params.target_session_attrs.as_str(),
            });
        }
        if errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(ClientError::AllHostsFailed(errors))
        }
    }

    /// [`ConnectParams::settings_since`] that this server knows, in one round trip.
    async fn apply_settings_since(&mut self, params: &ConnectParams) -> Result<()> {
        if params.replication != ReplicationMode::Off {
            return Ok(());
        }
        let version = self.server_version().0;
        let sql: String = params
            .settings_since
            .iter()
            .filter(|s| version >= s.since)
            .map(|s| format!("SET {} = '{}';", s.name, s.value.replace('\'', "''")))
            .collect();
        if !sql.is_empty() {
            self.simple_query(&sql).await?;
        }
        Ok(())
    }

    /// Whether this server is of the kind `wanted`. PostgreSQL 14+ reports `in_hot_standby` at startup;
    /// before that, and for read-only/read-write, `SHOW transaction_read_only` answers (also in
    /// replication mode).
    async fn session_matches(&mut self, wanted: SessionAttrs) -> Result<bool> {
        if wanted == SessionAttrs::Any {
            return Ok(true);
        }
        let read_only = match wanted {
            SessionAttrs::Primary | SessionAttrs::Standby => match self.parameter("in_hot_standby")
            {
                Some(v) => v == "on",
                None => self.show_bool("transaction_read_only").await?,
            },
            _ => self.show_bool("transaction_read_only").await?,
        };
        Ok(match wanted {
            SessionAttrs::ReadWrite | SessionAttrs::Primary => !read_only,
            _ => read_only,
        })
    }

    async fn show_bool(&mut self, name: &str) -> Result<bool> {
        let res = self.simple_query(&format!("SHOW {name}")).await?;
        Ok(res.first().and_then(|r| r.get_idx(0, 0)) == Some("on"))
    }

    async fn connect_endpoint(params: &ConnectParams, endpoint: &Endpoint) -> Result<Connection> {
        let is_unix = matches!(endpoint, Endpoint::Unix { .. });
        // TLS over Unix sockets is never attempted (libpq does the same).
        let attempts: &[TlsAttempt] = match (is_unix, params.tls.mode) {
            (true, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(ClientError::Tls {
                    endpoint: endpoint.to_string(),
                    reason: "TLS is not available on a Unix-domain socket; use a TCP host or a lower sslmode".into(),
                })
            }
            (true, _) | (false, SslMode::Disable) => &[TlsAttempt::Plain],
            (false, SslMode::Allow) => &[TlsAttempt::Plain, TlsAttempt::Tls],
            (false, SslMode::Prefer) => &[TlsAttempt::Tls, TlsAttempt::Plain],
            (false, _) => &[TlsAttempt::Tls],
        };
        let mut last = None;
        for (i, &attempt) in attempts.iter().enumerate() {
            let fut = Self::answer_awaited(
                Self::connect_attempt(params, endpoint, attempt),
                endpoint,
                params.connect_timeout,
            );
            let res = match params.connect_timeout {
                Some(t) if !t.is_zero() => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::ConnectTimeout {
                        endpoint: endpoint.to_string(),
                        seconds: t.as_secs(),
                    }),
                },
                _ => fut.await,
            };
            match res {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let retry = i + 1 < attempts.len()
                        && match attempts[i] {
                            // prefer: the TLS handshake failed — try plaintext, as libpq does.
                            TlsAttempt::Tls => matches!(e, ClientError::Tls { .. }),
                            // allow: the server refused plaintext (hostssl only) — try TLS.
                            TlsAttempt::Plain => matches!(e, ClientError::Rejected { .. }),
                        };
                    if !retry {
                        return Err(e);
                    }
                    debug!(%endpoint, error = %e, "retrying with the other TLS setting");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// `attempt`, saying once in the log when the host has not answered for a while: without
    /// it, a host that accepts and never answers (a frozen machine, a hung proxy) leaves the
    /// log silent for the whole connect timeout.
    async fn answer_awaited<T>(
        attempt: impl std::future::Future<Output = T>,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
    ) -> T {
        const SILENCE_REPORTED_AFTER: Duration = Duration::from_secs(10);
        tokio::pin!(attempt);
        tokio::select! {
            r = &mut attempt => return r,
            _ = tokio::time::sleep(SILENCE_REPORTED_AFTER) => {}
        }
        match timeout.filter(|t| !t.is_zero()) {
            Some(t) => {
                warn!(%endpoint, "no answer from {endpoint} after {} s; waiting up to {} s (connect_timeout) before trying the next host or again", SILENCE_REPORTED_AFTER.as_secs(), t.as_secs())
            }
            None => {
                warn!(%endpoint, "no answer from {endpoint} after {} s; still waiting (connect_timeout=0: no limit)", SILENCE_REPORTED_AFTER.as_secs())
            }
        }
        attempt.await
    }

    async fn connect_attempt(
        params: &ConnectParams,
        endpoint: &Endpoint,
        attempt: TlsAttempt,
    ) -> Result<Connection> {
        let ep = endpoint.to_string();
        let stream = match endpoint {
            Endpoint::Unix { socket, .. } => {
                let s = UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        endpoint: format!(
                            "{ep}: is the server running locally and accepting connections on that socket?"
                        ),
                        source,
                    })?;
                Stream::Unix(s)
            }
            Endpoint::Tcp { host, addr, port } => {
                let tcp = match addr {
                    Some(a) => TcpStream::connect((*a, *port)).await,
                    None => {
                        // Resolved apart from connecting, so that a name that does not resolve
                        // (a typo: definite) is told from a server that is down (transient).
                        let addrs: Vec<std::net::SocketAddr> =
                            tokio::net::lookup_host((host.as_str(), *port))
                                .await
                                .map_err(|source| ClientError::Resolve {
                                    host: host.clone(),
                                    source,
                                })?
                                .collect();
                        TcpStream::connect(&addrs[..]).await
                    }
                }
                .map_err(|source| ClientError::Connect {
                    endpoint: format!(
                        "{ep}: is the server running on that host and accepting TCP/IP connections?"
                    ),
                    source,
                })?;
                configure_tcp(&tcp, params);
                if attempt == TlsAttempt::Tls {
                    negotiate_tls(tcp, host, params, &ep).await?
                } else {
                    Stream::Tcp(tcp)
                }
            }
        };
        let mut conn = Connection {
            stream,
            read_buf: ReadBuffer::new(),
            write_buf: BytesMut::with_capacity(8192),
            parameters: HashMap::new(),
            server_version: ServerVersion(0),
            endpoint: endpoint.clone(),
            process_id: 0,
            notices: VecDeque::new(),
            transaction_status: b'I',
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnectParams) -> Result<()> {
        let mut startup: Vec<(&str, &str)> = vec![("user", params.user.as_str())];
        if let Some(db) = &params.dbname {
            startup.push(("database", db));
        }
        match params.replication {
            ReplicationMode::Physical => startup.push(("replication", "true")),
            ReplicationMode::Database => startup.push(("replication", "database")),
            ReplicationMode::Off => {}
        }
        if let Some(app) = &params.application_name {
            startup.push(("application_name", app));
        }
        if let Some(opts) = &params.options {
            startup.push(("options", opts));
        }
        startup.push(("client_encoding", "UTF8"));
        for (k, v) in &params.extra_startup {
            startup.push((k, v));
        }
        frontend::startup_message(startup.iter().copied(), &mut self.write_buf)
            .map_err(|e| ClientError::Config(format!("invalid startup parameter: {e}")))?;
        self.flush().await?;
        self.authenticate(params).await?;
        // After AuthenticationOk: parameters, key data, then ReadyForQuery.
        loop {
            match self.read_raw().await? {
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::BackendKeyData { process_id, .. } => self.process_id = process_id,
                BackendMessage::ReadyForQuery { .. } => break,
                BackendMessage::NoticeResponse(n) => self.keep_notice(n),
                BackendMessage::NegotiateProtocolVersion { .. } => {}
                BackendMessage::ErrorResponse(e) => {
                    return Err(ClientError::Rejected {
                        endpoint: self.endpoint.to_string(),
                        error: Box::new(ServerError { fields: e }),
                    })
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} during connection startup",
                        message_name(&other)
                    )))
                }
            }
        }
        let v = self
            .parameters
            .get("server_version")
            .and_then(|v| ServerVersion::parse_server_version(v))
            .ok_or_else(|| {
                ClientError::Unexpected("server did not report a valid server_version".into())
            })?;
        self.server_version = v;
        debug!(endpoint = %self.endpoint, version = v.0, tls = self.stream.is_tls(), "connected");
        Ok(())
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<()> {
        let ep = self.endpoint.to_string();
        let auth_err = |reason: String| ClientError::Auth {
            endpoint: ep.clone(),
            reason,
        };
        let mut used_channel_binding = false;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_raw().await?;
            let auth = match msg {
                BackendMessage::Authentication(a) => a,
                BackendMessage::ErrorResponse(e) => {
                    return Err(ClientError::Rejected {
                        endpoint: ep.clone(),
                        error: Box::new(ServerError { fields: e }),
                    })
                }
                BackendMessage::NoticeResponse(n) => {
                    self.keep_notice(n);
                    continue;
                }
                BackendMessage::NegotiateProtocolVersion { .. } => continue,
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} during authentication",
                        message_name(&other)
                    )))
                }
            };
            let check_allowed = |m: AuthMethod| -> Result<()> {
                match &params.allowed_auth {
                    Some(list) if !list.contains(&m) => Err(auth_err(format!(
                        "server requested {m:?} authentication, which require_auth does not allow"
                    ))),
                    _ => Ok(()),
                }
            };
            match auth {
                Authentication::Ok => {
                    if scram.is_none() {
                        check_allowed(AuthMethod::None)?;
                    }
                    if params.channel_binding == ChannelBindingMode::Require
                        && !used_channel_binding
                    {
                        return Err(auth_err(
                            "channel binding required, but the server authenticated the client without channel binding".into(),
                        ));
                    }
                    return Ok(());
                }
                Authentication::CleartextPassword => {
                    check_allowed(AuthMethod::Password)?;
                    self.refuse_without_binding(params, &auth_err)?;
                    let pw = self.password(params, &auth_err)?;
                    frontend::password_message(pw.expose().as_bytes(), &mut self.write_buf)
                        .map_err(|e| auth_err(format!("password: {e}")))?;
                    self.flush().await?;
                }
                Authentication::Md5Password { salt } => {
                    check_allowed(AuthMethod::Md5)?;
                    self.refuse_without_binding(params, &auth_err)?;
                    let pw = self.password(params, &auth_err)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        params.user.as_bytes(),
                        pw.expose().as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| auth_err(format!("password: {e}")))?;
                    self.flush().await?;
                }
                Authentication::Sasl { mechanisms } => {
                    check_allowed(AuthMethod::ScramSha256)?;
                    let pw = self.password(params, &auth_err)?;
                    let offers_plus = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
                    let offers_plain = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256);
                    let tls_cert = self.peer_certificate();
                    let (mechanism, binding) = match (&tls_cert, params.channel_binding) {
                        (Some(cert), ChannelBindingMode::Prefer | ChannelBindingMode::Require)
                            if offers_plus =>
                        {
                            let data = tls::tls_server_end_point(cert).map_err(&auth_err)?;
                            used_channel_binding = true;
                            (
                                sasl::SCRAM_SHA_256_PLUS,
                                ChannelBinding::tls_server_end_point(data),
                            )
                        }
                        (_, ChannelBindingMode::Require) => {
                            return Err(auth_err(if tls_cert.is_none() {
                                "channel binding is required, but the connection is not encrypted (use sslmode=require or higher)".into()
                            } else {
                                "channel binding is required, but the server did not offer SCRAM-SHA-256-PLUS".into()
                            }))
                        }
                        (Some(_), ChannelBindingMode::Prefer) if offers_plain => {
                            (sasl::SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        _ if offers_plain => (sasl::SCRAM_SHA_256, ChannelBinding::unsupported()),
                        _ => {
                            return Err(auth_err(format!(
                                "server offered only unsupported SASL mechanisms: {}",
                                mechanisms.join(", ")
                            )))
                        }
                    };
                    let s = ScramSha256::new(pw.expose().as_bytes(), binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.write_buf)
                        .map_err(|e| auth_err(format!("SASL: {e}")))?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Authentication::SaslContinue { data } => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ClientError::Unexpected("SASL continue without SASL start".into())
                    })?;
                    s.update(&data)
                        .map_err(|e| auth_err(format!("SCRAM exchange failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)
                        .map_err(|e| auth_err(format!("SASL: {e}")))?;
                    self.flush().await?;
                }
                Authentication::SaslFinal { data } => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ClientError::Unexpected("SASL final without SASL start".into())
                    })?;
                    s.finish(&data).map_err(|e| {
                        auth_err(format!("the server's SCRAM signature is invalid: {e}"))
                    })?;
                }
                Authentication::Unsupported { code } => {
                    return Err(auth_err(format!(
                        "server requested an authentication method walrelay does not support (code {code}: Kerberos/GSSAPI/SSPI); use password, md5 or scram-sha-256 in pg_hba.conf"
                    )))
                }
            }
        }
    }

    fn refuse_without_binding(
        &self,
        params: &ConnectParams,
        auth_err: &dyn Fn(String) -> ClientError,
    ) -> Result<()> {
        if params.channel_binding == ChannelBindingMode::Require {
            return Err(auth_err(
                "channel binding required, but the server requested a password method without channel binding (use scram-sha-256 in pg_hba.conf)".into(),
            ));
        }
        Ok(())
    }

    fn password(
        &self,
        params: &ConnectParams,
        auth_err: &dyn Fn(String) -> ClientError,
    ) -> Result<crate::params::Secret> {
        params
            .password
            .as_ref()
            .and_then(|lookup| lookup(&self.endpoint))
            .ok_or_else(|| {
                auth_err(format!(
                    "the server asks for a password for user \"{}\" but none was given: set PGPASSWORD, add it to ~/.pgpass, or pass password= in the connection string",
                    params.user
                ))
            })
    }

    fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Stream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            _ => None,
        }
    }

    fn keep_notice(&mut self, n: ErrorFields) {
        match n.severity.as_str() {
            "WARNING" => warn!(server_message = %n.message, "server warning"),
            _ => info!(server_message = %n.message, "server notice"),
        }
        if self.notices.len() >= MAX_KEPT_NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
    }

    /// Notices and warnings received so far (the oldest are dropped beyond a thousand).
    pub fn take_notices(&mut self) -> Vec<ErrorFields> {
        self.notices.drain(..).collect()
    }

    /// Reads the next message, with no interpretation. Cancellation-safe: bytes read stay in the
    /// buffer until a complete message is returned.
    async fn read_raw(&mut self) -> Result<BackendMessage> {
        loop {
            let missing = self.read_buf.missing();
            if missing.is_none() {
                if let Some(m) = BackendMessage::parse(&mut self.read_buf.buf, MAX_MESSAGE_LEN)? {
                    return Ok(m);
                }
            }
            // `missing` is None only for a complete message or an invalid length, both of which
            // parse() returned; read at least a byte rather than spin should that ever change.
            let n = match self.read_buf.prepare(missing.unwrap_or(1)) {
                None => self.stream.read_buf(&mut self.read_buf.buf).await?,
                Some(limit) => {
                    self.stream
                        .read_buf(&mut (&mut self.read_buf.buf).limit(limit))
                        .await?
                }
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Reads the next message that matters to the caller: notices are logged and kept, parameter
    /// changes recorded. ErrorResponse is returned as a message (the caller knows whether a
    /// ReadyForQuery follows). Cancellation-safe.
    pub async fn read_message(&mut self) -> Result<BackendMessage> {
        loop {
            match self.read_raw().await? {
                BackendMessage::NoticeResponse(n) => self.keep_notice(n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::NotificationResponse => {}
                m => {
                    if let BackendMessage::ReadyForQuery { status } = m {
                        self.transaction_status = status;
                    }
                    return Ok(m);
                }
            }
        }
    }

    /// Whether a complete message is already buffered (so `read_message` will not wait).
    pub fn has_buffered_message(&self) -> bool {
        let buf = &self.read_buf.buf;
        if buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        len >= 4 && buf.len() > len as usize
    }

    /// Whether more bytes from the server wait in the socket, not read yet (see
    /// [`Stream::has_unread_bytes`]): a message that will not keep `read_message` waiting long.
    pub fn has_unread_bytes(&self) -> bool {
        self.stream.has_unread_bytes()
    }

    /// Queues a simple Query message (call [`flush`](Self::flush) to send).
    pub fn queue_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write_buf)
            .map_err(|e| ClientError::Config(format!("invalid query text: {e}")))
    }

    /// Queues a CopyData message carrying `payload`.
    pub fn queue_copy_data(&mut self, payload: &[u8]) {
        self.write_buf.reserve(5 + payload.len());
        self.write_buf.put_u8(b'd');
        self.write_buf.put_i32((payload.len() + 4) as i32);
        self.write_buf.extend_from_slice(payload);
    }

    pub fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.write_buf);
    }

    /// The buffer of messages queued and not yet sent, for the encoders of the other modules.
    pub(crate) fn write_buf_mut(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Bytes queued and not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.write_buf.len()
    }

    /// Whether the session is inside a transaction block (open or failed), as of the last
    /// ReadyForQuery.
    pub fn in_transaction(&self) -> bool {
        self.transaction_status != b'I'
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends a query and collects its results until ReadyForQuery. A server error becomes
    /// `ClientError::Server` (after the connection is ready again). COPY results are refused.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        self.queue_query(sql)?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error: Option<ServerError> = None;
        loop {
            match self.read_message().await? {
                BackendMessage::RowDescription(fields) => {
                    current = Some(QueryResult {
                        columns: fields.into_iter().map(|f| f.name).collect(),
                        ..Default::default()
                    });
                }
                BackendMessage::DataRow(cols) => {
                    let r = current.as_mut().ok_or_else(|| {
                        ClientError::Unexpected("DataRow without RowDescription".into())
                    })?;
                    if cols.len() != r.columns.len() {
                        return Err(ClientError::Unexpected(
                            "DataRow column count differs from RowDescription".into(),
                        ));
                    }
                    r.rows.push(cols);
                }
                BackendMessage::CommandComplete { tag } => {
                    let mut r = current.take().unwrap_or_default();
                    r.tag = tag;
                    results.push(r);
                }
                BackendMessage::EmptyQueryResponse => {}
                BackendMessage::ErrorResponse(e) => error = Some(ServerError { fields: e }),
                BackendMessage::ReadyForQuery { .. } => {
                    return match error {
                        Some(e) => Err(ClientError::Server(Box::new(e))),
                        None => Ok(results),
                    };
                }
                BackendMessage::CopyOutResponse(_)
                | BackendMessage::CopyBothResponse(_)
                | BackendMessage::CopyInResponse(_) => {
                    return Err(ClientError::Unexpected(format!(
                        "query {sql:?} started a COPY, which simple_query does not handle"
                    )))
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "unexpected {} in reply to a query",
                        message_name(&other)
                    )))
                }
            }
        }
    }

    /// Reads messages until ReadyForQuery, returning the first server error seen, if any. Used to
    /// resynchronize after a command failed part-way.
    pub async fn drain_until_ready(&mut self) -> Result<Option<ServerError>> {
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery { .. } => return Ok(error),
                BackendMessage::ErrorResponse(e) if error.is_none() => {
                    error = Some(ServerError { fields: e })
                }
                _ => {}
            }
        }
    }

    pub fn server_version(&self) -> ServerVersion {
        self.server_version
    }

    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's version as it names itself (`server_version`, e.g. `9.6.24`), when walrelay
    /// does not support its major ([`walrelay_protocol::command::MIN_SUPPORTED_MAJOR`] to
    /// [`walrelay_protocol::command::MAX_SUPPORTED_MAJOR`]); `None` for a supported server.
    pub fn unsupported_server_version(&self) -> Option<String> {
        use walrelay_protocol::command::{MAX_SUPPORTED_MAJOR, MIN_SUPPORTED_MAJOR};
        let version = self.server_version;
        if (MIN_SUPPORTED_MAJOR..=MAX_SUPPORTED_MAJOR).contains(&version.major()) {
            return None;
        }
        Some(
            self.parameter("server_version")
                .map_or_else(|| version.0.to_string(), str::to_string),
        )
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    pub fn backend_pid(&self) -> i32 {
        self.process_id
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The connection's read buffer, and the allocations it can go back to.
///
/// Messages are cut out of the buffer without copying (`split_to().freeze()`), and a CopyData
/// payload may live on after it is returned: queued for the base backup's extraction thread or the
/// WAL disk task, or waiting to be written. So when the buffer runs full its allocation is usually
/// still shared, and a plain `reserve` allocates a fresh one — every 256 kB of a stream. Fresh
/// memory is faulted in by the kernel page by page on the first `recv` into it, and handed back
/// soon after by `free`; in a base backup of 1 GB, page faults and heap growth made up 11% of
/// walrelay's CPU samples (docs/benchmarks.md). Instead a full buffer is *retired*: an empty handle
/// to its allocation is kept, and as soon as every message cut from it has been dropped
/// (`try_reclaim` succeeds) the allocation is read into again, its pages still mapped. At most
/// [`MAX_RETIRED_READ_BYTES`] are kept; beyond that the oldest handle is let go (its memory is
/// freed with its last message).
///
/// Two more rules keep copying down. A message is not left to straddle the end of a buffer when
/// the tail can hold the rest of it: the read is limited to the message's remaining bytes, so the
/// next buffer starts at a message boundary with nothing to carry over. And
/// `BackendMessage::parse` is only called once the front message is complete (or its length is
/// invalid, which it reports), so its own `reserve` never allocates behind our back.
struct ReadBuffer {
    buf: BytesMut,
    /// Size of `buf`'s allocation.
    alloc: usize,
    /// Oldest first: empty handles to allocations that messages handed out may still use, with
    /// their sizes.
    retired: VecDeque<(BytesMut, usize)>,
    retired_bytes: usize,
    /// Allocations made so far (the first included), for tests.
    allocations: u64,
}

impl ReadBuffer {
    fn new() -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::with_capacity(READ_BUFFER),
            alloc: READ_BUFFER,
            retired: VecDeque::new(),
            retired_bytes: 0,
            allocations: 1,
        }
    }

    /// Bytes the message at the front still needs before it can be parsed; `None` when it is
    /// complete, or when its header carries a length the parser will refuse.
    fn missing(&self) -> Option<usize> {
        let b = &self.buf;
        if b.len() < 5 {
            return Some(5 - b.len());
        }
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_MESSAGE_LEN).contains(l))?;
        (len + 1).checked_sub(b.len()).filter(|&m| m > 0)
    }

    /// Makes room to read at least `missing` bytes (the rest of the front message, which is all
    /// the buffer holds) and returns how many to read at most: `None` for as many as fit.
    fn prepare(&mut self, missing: usize) -> Option<usize> {
        let len = self.buf.len();
        let spare = self.buf.capacity() - len;
        if missing <= spare {
            if spare >= MIN_READ_SPACE {
                return None;
            }
            if len > 0 {
                // A short tail that can hold the rest of the message: end the read there.
                return Some(missing);
            }
        }
        self.switch(len.saturating_add(missing));
        None
    }

    /// Moves on to an allocation with room for `min_capacity` bytes: this one again if nothing
    /// else uses it, else the oldest retired one that is free, else a new one. The partial
    /// message at the front moves with it.
    fn switch(&mut self, min_capacity: usize) {
        let len = self.buf.len();
        let wanted = min_capacity.max(READ_BUFFER);
        if self.buf.try_reclaim(wanted - len) {
            return;
        }
        let free = self
            .retired
            .iter_mut()
            .position(|(b, _)| b.try_reclaim(wanted));
        let (mut next, alloc) = match free.and_then(|i| self.retired.remove(i)) {
            Some((b, alloc)) => {
                self.retired_bytes -= alloc;
                (b, alloc)
            }
            None => {
                self.allocations += 1;
                (BytesMut::with_capacity(wanted), wanted)
            }
        };
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        let old_alloc = std::mem::replace(&mut self.alloc, alloc);
        old.clear();
        self.retire(old, old_alloc);
    }

    fn retire(&mut self, handle: BytesMut, alloc: usize) {
        // A buffer made for one large message is not worth keeping.
        if alloc > 2 * READ_BUFFER {
            return;
        }
        while self.retired_bytes + alloc > MAX_RETIRED_READ_BYTES {
            match self.retired.pop_front() {
                Some((_, a)) => self.retired_bytes -= a,
                None => return,
            }
        }
        self.retired_bytes += alloc;
        self.retired.push_back((handle, alloc));
    }
}

fn configure_tcp(tcp: &TcpStream, params: &ConnectParams) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    if params.keepalives {
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = params.keepalives_idle {
            ka = ka.with_time(t);
        }
        if let Some(t) = params.keepalives_interval {
            ka = ka.with_interval(t);
        }
        if let Some(n) = params.keepalives_count {
            ka = ka.with_retries(n);
        }
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            debug!(error = %e, "could not set TCP keepalives");
        }
    }
    if let Some(t) = params.tcp_user_timeout {
        if let Err(e) = sock.set_tcp_user_timeout(Some(t)) {
            debug!(error = %e, "could not set tcp_user_timeout");
        }
    }
}

/// SSLRequest, then exactly one byte of answer, then the handshake.
async fn negotiate_tls(
    mut tcp: TcpStream,
    host: &str,
    params: &ConnectParams,
    ep: &str,
) -> Result<Stream> {
    let tls_err = |reason: String| ClientError::Tls {
        endpoint: ep.to_string(),
        reason,
    };
    let config = tls::client_config(&params.tls).map_err(ClientError::Config)?;
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    // Read exactly one byte: anything after it belongs to the TLS handshake (and a server that sends
    // more before the handshake is attempting a buffering attack, CVE-2021-23222).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| {
        tls_err(format!(
            "server closed the connection during SSL negotiation: {e}"
        ))
    })?;
    match answer[0] {
        b'S' => {}
        b'N' => {
            if params.tls.mode.allows_plaintext() {
                return Ok(Stream::Tcp(tcp));
            }
            return Err(tls_err(
                "server does not support SSL, but SSL was required (sslmode)".into(),
            ));
        }
        b'E' => {
            return Err(tls_err(
                "server rejected the SSL request with an error (is it a PostgreSQL server?)".into(),
            ))
        }
        other => {
            return Err(tls_err(format!(
                "received invalid response to SSL negotiation: {:?}",
                other as char
            )))
        }
    }
    let name = tls::server_name(host).map_err(&tls_err)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    Ok(Stream::Tls(Box::new(s)))
}

/// A short name for a message, for error text.
pub fn message_name(m: &BackendMessage) -> &'static str {
    match m {
        BackendMessage::Authentication(_) => "Authentication",
        BackendMessage::ParameterStatus { .. } => "ParameterStatus",
        BackendMessage::BackendKeyData { .. } => "BackendKeyData",
        BackendMessage::ReadyForQuery { .. } => "ReadyForQuery",
        BackendMessage::RowDescription(_) => "RowDescription",
        BackendMessage::DataRow(_) => "DataRow",
        BackendMessage::CommandComplete { .. } => "CommandComplete",
        BackendMessage::EmptyQueryResponse => "EmptyQueryResponse",
        BackendMessage::ErrorResponse(_) => "ErrorResponse",
        BackendMessage::NoticeResponse(_) => "NoticeResponse",
        BackendMessage::CopyOutResponse(_) => "CopyOutResponse",
        BackendMessage::CopyInResponse(_) => "CopyInResponse",
        BackendMessage::CopyBothResponse(_) => "CopyBothResponse",
        BackendMessage::CopyData(_) => "CopyData",
        BackendMessage::CopyDone => "CopyDone",
        BackendMessage::NegotiateProtocolVersion { .. } => "NegotiateProtocolVersion",
        BackendMessage::NotificationResponse => "NotificationResponse",
        BackendMessage::ParseComplete => "ParseComplete",
        BackendMessage::BindComplete => "BindComplete",
        BackendMessage::NoData => "NoData",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    /// One backend message on the wire: type byte, length, body.
    fn wire(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// What a `recv` does: copies at most `max` bytes of `src` into the spare capacity.
    fn recv(rb: &mut ReadBuffer, src: &mut &[u8], max: Option<usize>) -> usize {
        let spare = rb.buf.capacity() - rb.buf.len();
        let n = spare.min(src.len()).min(max.unwrap_or(usize::MAX));
        rb.buf.extend_from_slice(&src[..n]);
        src.advance(n);
        n
    }

    /// Deterministic pseudo-random numbers (no dev-dependency needed for a shuffle of sizes).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, below: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % below.max(1)
        }
    }

    /// Reads every message out of `stream` with the connection's loop, checks it against
    /// `bodies`, and holds on to up to `hold` payloads at a time the way a consumer queue does.
    /// Returns the number of buffers allocated.
    fn read_all(stream: &[u8], bodies: &[Vec<u8>], seed: u64, hold: usize) -> u64 {
        let mut rb = ReadBuffer::new();
        let mut rng = Lcg(seed);
        let mut src = stream;
        let mut expected = bodies.iter();
        let mut held: VecDeque<Bytes> = VecDeque::new();
        loop {
            let missing = rb.missing();
            if missing.is_none() {
                match BackendMessage::parse(&mut rb.buf, MAX_MESSAGE_LEN).unwrap() {
                    Some(BackendMessage::CopyData(p)) => {
                        assert_eq!(Some(&p[..]), expected.next().map(|b| &b[..]));
                        held.push_back(p);
                        while held.len() > rng.next(hold + 1) {
                            held.pop_front();
                        }
                        continue;
                    }
                    Some(other) => panic!("unexpected {}", message_name(&other)),
                    None => panic!("a complete message did not parse"),
                }
            }
            if src.is_empty() {
                break;
            }
            let limit = rb.prepare(missing.unwrap_or(1));
            // A recv returns what the socket holds: anything from one byte to all that fits.
            let arrived = 1 + rng.next(300 * 1024);
            let max = limit.map_or(arrived, |l| l.min(arrived));
            assert!(
                recv(&mut rb, &mut src, Some(max)) > 0,
                "no room to read into"
            );
        }
        assert!(expected.next().is_none(), "messages missing");
        assert!(rb.buf.is_empty(), "bytes left over");
        assert!(rb.retired_bytes <= MAX_RETIRED_READ_BYTES);
        rb.allocations
    }

    #[test]
    fn missing_bytes_of_the_front_message() {
        let mut rb = ReadBuffer::new();
        assert_eq!(rb.missing(), Some(5));
        let m = wire(b'd', &[7u8; 100]);
        rb.buf.extend_from_slice(&m[..3]);
        assert_eq!(rb.missing(), Some(2));
        rb.buf.extend_from_slice(&m[3..50]);
        assert_eq!(rb.missing(), Some(m.len() - 50));
        rb.buf.extend_from_slice(&m[50..]);
        assert_eq!(rb.missing(), None);
        // A length the parser refuses: left to parse() to report.
        let mut bad = ReadBuffer::new();
        bad.buf.extend_from_slice(&[b'd', 0, 0, 0, 2]);
        assert_eq!(bad.missing(), None);
        assert!(BackendMessage::parse(&mut bad.buf, MAX_MESSAGE_LEN).is_err());
        let mut huge = ReadBuffer::new();
        huge.buf.extend_from_slice(&[b'd', 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(huge.missing(), None);
        assert!(BackendMessage::parse(&mut huge.buf, MAX_MESSAGE_LEN).is_err());
    }

    #[test]
    fn a_short_tail_is_filled_up_to_the_message_end_only() {
        let mut rb = ReadBuffer::new();
        // Fill the buffer up to 1000 bytes before its end with one message, and consume it.
        let first = wire(b'd', &vec![1u8; READ_BUFFER - 1000 - 5]);
        let mut src = &first[..];
        recv(&mut rb, &mut src, None);
        let keep = BackendMessage::parse(&mut rb.buf, MAX_MESSAGE_LEN).unwrap();
        // The next message starts in the tail: 100 bytes of it arrive.
        let second = wire(b'd', &[2u8; 500]);
        rb.buf.extend_from_slice(&second[..100]);
        let missing = rb.missing().unwrap();
        assert_eq!(missing, second.len() - 100);
        assert_eq!(rb.prepare(missing), Some(missing));
        // One that does not fit the tail moves to another buffer, carrying its start along.
        let mut rb2 = ReadBuffer::new();
        let mut src = &first[..];
        recv(&mut rb2, &mut src, None);
        let keep2 = BackendMessage::parse(&mut rb2.buf, MAX_MESSAGE_LEN).unwrap();
        let third = wire(b'd', &[3u8; 5000]);
        rb2.buf.extend_from_slice(&third[..100]);
        let old = rb2.buf.as_ptr();
        assert_eq!(rb2.prepare(rb2.missing().unwrap()), None);
        assert_ne!(
            rb2.buf.as_ptr(),
            old,
            "still shared with a held message: a new buffer"
        );
        assert_eq!(&rb2.buf[..], &third[..100]);
        assert!(rb2.buf.capacity() >= READ_BUFFER);
        assert_eq!(rb2.retired.len(), 1);
        drop((keep, keep2));
    }

    #[test]
    fn a_full_buffer_is_reused_once_its_messages_are_dropped() {
        let mut rb = ReadBuffer::new();
        let first_alloc = rb.buf.as_ptr() as usize;
        let msg = wire(b'd', &vec![9u8; READ_BUFFER - 5]);
        let mut src = &msg[..];
        recv(&mut rb, &mut src, None);
        let held = BackendMessage::parse(&mut rb.buf, MAX_MESSAGE_LEN).unwrap();
        // Full and still shared: a second allocation.
        assert_eq!(rb.prepare(5), None);
        let second_alloc = rb.buf.as_ptr() as usize;
        assert_ne!(second_alloc, first_alloc);
        let mut src = &msg[..];
        recv(&mut rb, &mut src, None);
        let held2 = BackendMessage::parse(&mut rb.buf, MAX_MESSAGE_LEN).unwrap();
        // The first message is gone: its allocation comes back, not a third one.
        drop(held);
        assert_eq!(rb.prepare(5), None);
        assert_eq!(rb.buf.as_ptr() as usize, first_alloc);
        // And with nothing held, a full buffer is simply read into again from its start.
        drop(held2);
        let mut src = &msg[..];
        recv(&mut rb, &mut src, None);
        drop(BackendMessage::parse(&mut rb.buf, MAX_MESSAGE_LEN).unwrap());
        assert_eq!(rb.prepare(5), None);
        assert_eq!(rb.buf.as_ptr() as usize, first_alloc);
    }

    /// 400 messages: empty, tiny, 32 kB (what a walsender sends) and, with `big`, some larger
    /// than a buffer.
    fn message_mix(seed: u64, big: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut rng = Lcg(seed);
        let mut stream = Vec::new();
        let mut bodies = Vec::new();
        for i in 0..400 {
            let len = match rng.next(10) {
                0 => 0,
                1 => rng.next(20),
                2 if big => 600 * 1024 + rng.next(100 * 1024),
                _ => 32 * 1024 + rng.next(8),
            };
            let body: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            stream.extend(wire(b'd', &body));
            bodies.push(body);
        }
        (stream, bodies)
    }

    #[test]
    fn messages_come_out_intact_whatever_the_reads_and_consumers_do() {
        for seed in 0..12u64 {
            let hold = [0, 1, 16, 64][seed as usize % 4];
            // 32 kB messages: the buffers in use are those the held messages pin, plus the one
            // being read into — never one per 256 kB of the ~10 MB streamed.
            let (stream, bodies) = message_mix(seed, false);
            let allocations = read_all(&stream, &bodies, seed, hold);
            let pinned = (hold * (32 * 1024 + 13)).div_ceil(READ_BUFFER) as u64;
            assert!(
                allocations <= pinned + 2,
                "seed {seed}, hold {hold}: {allocations} allocations"
            );
            // Messages larger than a buffer get one of their own, never kept for reuse.
            let (stream, bodies) = message_mix(seed, true);
            let big = bodies.iter().filter(|b| b.len() > READ_BUFFER).count() as u64;
            let allocations = read_all(&stream, &bodies, seed, hold);
            assert!(
                allocations <= big + pinned + 2 + hold as u64,
                "seed {seed}, hold {hold}: {allocations} allocations for {big} large messages"
            );
        }
    }

    #[tokio::test]
    async fn read_raw_over_a_socket() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = Connection {
            stream: Stream::Unix(a),
            read_buf: ReadBuffer::new(),
            write_buf: BytesMut::new(),
            parameters: HashMap::new(),
            server_version: ServerVersion(150000),
            endpoint: Endpoint::Unix {
                socket: "/nonexistent".into(),
                port: 5432,
            },
            process_id: 0,
            notices: VecDeque::new(),
            transaction_status: b'I',
        };
        let mut stream = Vec::new();
        for i in 0..200usize {
            stream.extend(wire(b'd', &vec![i as u8; 1 + i * 997]));
        }
        stream.extend(wire(b'c', &[]));
        let writer = tokio::spawn(async move {
            for piece in stream.chunks(70_001) {
                b.write_all(piece).await.unwrap();
            }
            b
        });
        for i in 0..200usize {
            match conn.read_message().await.unwrap() {
                BackendMessage::CopyData(p) => assert_eq!(p, vec![i as u8; 1 + i * 997]),
                other => panic!("unexpected {}", message_name(&other)),
            }
        }
        assert!(matches!(
            conn.read_message().await.unwrap(),
            BackendMessage::CopyDone
        ));
        drop(writer.await.unwrap());
        assert!(matches!(
            conn.read_message().await,
            Err(ClientError::Closed)
        ));
    }
}

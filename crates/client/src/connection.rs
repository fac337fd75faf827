//! One connection to a PostgreSQL server: startup, TLS negotiation, authentication, then messages.
//!
//! [`Connection::read_message`] is cancellation-safe (bytes are read into an owned buffer and a message is
//! only returned once complete), so a replication task can `select!` between it and its outgoing queue.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
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
/// Initial capacity of the read buffer; grows for large CopyData messages.
const READ_BUFFER: usize = 256 * 1024;

pub struct Connection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    server_version: ServerVersion,
    endpoint: Endpoint,
    process_id: i32,
    notices: VecDeque<ErrorFields>,
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
        for wanted in passes {
            for endpoint in &params.endpoints {
                match Self::connect_endpoint(params, endpoint).await {
                    Ok(mut c) => match c.session_matches(wanted).await {
                        Ok(true) => return Ok(c),
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
            return Err(ClientError::Config(format!(
                "none of the {} host(s) is a server with target_session_attrs={}",
                params.endpoints.len(),
                params.target_session_attrs.as_str()
            )));
        }
        if errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(ClientError::AllHostsFailed(errors))
        }
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
            let fut = Self::connect_attempt(params, endpoint, attempt);
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
                    None => TcpStream::connect((host.as_str(), *port)).await,
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
            read_buf: BytesMut::with_capacity(READ_BUFFER),
            write_buf: BytesMut::with_capacity(8192),
            parameters: HashMap::new(),
            server_version: ServerVersion(0),
            endpoint: endpoint.clone(),
            process_id: 0,
            notices: VecDeque::new(),
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

    /// Reads the next message, with no interpretation. Cancellation-safe.
    async fn read_raw(&mut self) -> Result<BackendMessage> {
        loop {
            if let Some(m) = BackendMessage::parse(&mut self.read_buf, MAX_MESSAGE_LEN)? {
                return Ok(m);
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8192 {
                self.read_buf.reserve(READ_BUFFER);
            }
            let n = self.stream.read_buf(&mut self.read_buf).await?;
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
                m => return Ok(m),
            }
        }
    }

    /// Whether a complete message is already buffered (so `read_message` will not wait).
    pub fn has_buffered_message(&self) -> bool {
        if self.read_buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]);
        len >= 4 && self.read_buf.len() > len as usize
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

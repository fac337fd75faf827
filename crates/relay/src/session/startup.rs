//! A downstream's way in: TLS negotiation, the startup packet, who may connect, authentication,
//! and what the relay reports about itself (`ProcessStartupPacket`, `ClientAuthentication`,
//! `BeginReportingGUCOptions` on a server).
//!
//! ```text
//!  [SSLRequest → S + TLS handshake | N] [GSSENCRequest → N]   (or a direct TLS ClientHello, 17+)
//!  StartupMessage (protocol 3.x; user; replication=true|database)
//!     → [NegotiateProtocolVersion 3.0]  address in --allow?  replication connection?
//!     → trust | SCRAM-SHA-256(-PLUS)     → AuthenticationOk
//!     → ParameterStatus × N, BackendKeyData (a pid of its own per session)
//! ```
//!
//! Every refusal is a FATAL ErrorResponse with PostgreSQL's SQLSTATE and a message that names the
//! cause; the connection closes after it. A failed password is logged with the user and the
//! address, never the password.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use walrelay_protocol::frontend::{FrontendMessage, SaslInitialResponse, StartupRequest};
use walrelay_protocol::scram::{self, ScramError, ScramSecret, ScramServer, SERVER_NONCE_BYTES};
use walrelay_protocol::server::encode_error_response;
use walrelay_protocol::server::{
    encode_authentication_ok, encode_authentication_sasl, encode_authentication_sasl_continue,
    encode_authentication_sasl_final, encode_backend_key_data, encode_negotiate_protocol_version,
    encode_parameter_status,
};
use walrelay_protocol::walsender;
use walrelay_protocol::ErrorFields;

use super::io::{Io, ReadError, Stream};
use super::{fatal, send_fatal_raw, Printable, Refused};
use crate::config::{Auth, AUTHENTICATION_TIMEOUT};
use crate::random::random_bytes;
use crate::shared::Shared;

/// The ParameterStatus that marks a relay: its value is walrelay's version.
pub const RELAY_PARAMETER: &str = "walrelay_serve";

/// The ParameterStatus that carries the relay's chain (its token, then its upstream's chain), by
/// which a relay sees that it would stream from itself ([`walrelay_walreceiver::tap`]).
pub const RELAY_CHAIN_PARAMETER: &str = "walrelay_serve_chain";

/// What the client asked for in its startup packet.
#[derive(Clone, Debug)]
pub struct Startup {
    pub user: String,
    /// `replication=database`: a logical walsender's connection, with its database.
    pub database: Option<String>,
    pub application_name: String,
    pub client_encoding: String,
    pub tls: bool,
}

/// `parse_bool` as the server reads `replication`: unique prefixes of true/false/yes/no/on/off,
/// and 1/0.
fn parse_bool(v: &str) -> Option<bool> {
    let v = v.trim().to_ascii_lowercase();
    if v.is_empty() {
        return None;
    }
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || v == "1" || prefix_of("on", 2) {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || v == "0" || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// Reads the untyped first packet (after a TLS handshake, the next one).
async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<StartupRequest, Refused> {
    loop {
        match StartupRequest::parse(buf) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(e) => {
                return Err(Refused::Fatal(fatal("08P01", &e.to_string())));
            }
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Refused::Quietly),
            Ok(_) => {}
        }
    }
}

/// The connection while encryption is negotiated: plain TCP until a TLS handshake succeeds.
enum Negotiating {
    Plain(TcpStream),
    Tls(Box<dyn Stream>),
}

impl Negotiating {
    async fn read_startup(&mut self, buf: &mut BytesMut) -> Result<StartupRequest, Refused> {
        match self {
            Negotiating::Plain(s) => read_startup(s, buf).await,
            Negotiating::Tls(s) => read_startup(s, buf).await,
        }
    }

    /// Sends a FATAL error and gives up on the connection.
    async fn refuse(mut self, f: ErrorFields) -> Refused {
        match &mut self {
            Negotiating::Plain(s) => write_fatal(s, &f).await,
            Negotiating::Tls(s) => write_fatal(s, &f).await,
        }
        Refused::Quietly
    }
}

async fn write_fatal<S: AsyncWrite + Unpin>(s: &mut S, f: &ErrorFields) {
    let mut out = BytesMut::new();
    if encode_error_response(f, &mut out).is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.write_all(&out)).await;
    }
}

/// What negotiation ends with: the stream, bytes already read past the startup message, the
/// startup parameters, whether TLS is on, and the protocol minor version asked for.
type Negotiated = (Box<dyn Stream>, BytesMut, Vec<(String, String)>, bool, u16);

/// Negotiates TLS and reads the startup message.
async fn negotiate(tcp: TcpStream, shared: &Shared) -> Result<Negotiated, Refused> {
    // A TLS ClientHello right away: PostgreSQL 17's sslnegotiation=direct.
    let mut first = [0u8; 1];
    let direct = matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == 0x16);
    let mut conn = match (direct, &shared.config.tls) {
        (true, Some(t)) => {
            let s = t.acceptor.accept(tcp).await.map_err(|e| {
                debug!(error = %e, "direct TLS handshake failed");
                Refused::Quietly
            })?;
            Negotiating::Tls(Box::new(s))
        }
        // Without a certificate a direct TLS client cannot be answered in its language.
        (true, None) => return Err(Refused::Quietly),
        (false, _) => Negotiating::Plain(tcp),
    };
    let mut buf = BytesMut::with_capacity(1024);
    let mut gss_asked = false;
    loop {
        let request = match conn.read_startup(&mut buf).await {
            Ok(r) => r,
            Err(Refused::Fatal(f)) => return Err(conn.refuse(f).await),
            Err(e) => return Err(e),
        };
        conn = match (request, conn) {
            (StartupRequest::Ssl, Negotiating::Plain(mut tcp)) => {
                if !buf.is_empty() {
                    let f = fatal("08P01", "received unencrypted data after SSL request");
                    return Err(Negotiating::Plain(tcp).refuse(f).await);
                }
                match &shared.config.tls {
                    Some(t) => {
                        tcp.write_all(b"S").await.map_err(|_| Refused::Quietly)?;
                        let s = t.acceptor.accept(tcp).await.map_err(|e| {
                            debug!(error = %e, "TLS handshake failed");
                            Refused::Quietly
                        })?;
                        Negotiating::Tls(Box::new(s))
                    }
                    None => {
                        tcp.write_all(b"N").await.map_err(|_| Refused::Quietly)?;
                        Negotiating::Plain(tcp)
                    }
                }
            }
            (StartupRequest::GssEnc, Negotiating::Plain(mut tcp)) if !gss_asked => {
                gss_asked = true;
                tcp.write_all(b"N").await.map_err(|_| Refused::Quietly)?;
                Negotiating::Plain(tcp)
            }
            (StartupRequest::Ssl | StartupRequest::GssEnc, conn) => {
                let f = fatal(
                    "08P01",
                    "unsupported frontend protocol: encryption was negotiated already",
                );
                return Err(conn.refuse(f).await);
            }
            // Cancelling is not supported (nothing a relay runs can be cancelled): close.
            (StartupRequest::Cancel { .. }, _) => return Err(Refused::Quietly),
            (
                StartupRequest::Startup {
                    major,
                    minor,
                    parameters,
                },
                conn,
            ) => {
                if major != 3 {
                    let f = fatal(
                        "0A000",
                        &format!(
                            "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                        ),
                    );
                    return Err(conn.refuse(f).await);
                }
                let (stream, tls): (Box<dyn Stream>, bool) = match conn {
                    Negotiating::Plain(t) => (Box::new(t), false),
                    Negotiating::Tls(s) => (s, true),
                };
                return Ok((stream, buf, parameters, tls, minor));
            }
        };
    }
}

/// From accept to ready: TLS, startup, checks, authentication, parameters. On success the
/// session's [`Io`] has AuthenticationOk, the parameters and BackendKeyData queued.
pub async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    pid: i32,
    shared: &Arc<Shared>,
) -> Result<(Io, Startup), Refused> {
    let work = async {
        let (stream, buf, params, tls, minor) = negotiate(tcp, shared).await?;
        let mut io = Io::new(stream, buf);
        match admit(&mut io, peer, pid, shared, params, tls, minor).await {
            Ok(startup) => Ok((io, startup)),
            Err(Refused::Fatal(f)) => {
                send_fatal_raw(&mut io, &f).await;
                Err(Refused::Quietly)
            }
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(AUTHENTICATION_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => {
            debug!("authentication timed out");
            Err(Refused::Quietly)
        }
    }
}

async fn admit(
    io: &mut Io,
    peer: SocketAddr,
    pid: i32,
    shared: &Shared,
    params: Vec<(String, String)>,
    tls: bool,
    minor: u16,
) -> Result<Startup, Refused> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let unrecognized: Vec<&str> = params
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("_pq_."))
        .collect();
    if minor > 0 || !unrecognized.is_empty() {
        // libpq 18 asks for 3.2 only when told to; 3.0 is what the relay speaks.
        let _ = encode_negotiate_protocol_version(0, &unrecognized, &mut io.tx.out);
    }
    let user = match get("user") {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(Refused::Fatal(fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )))
        }
    };
    let replication = get("replication");
    let database = match replication.map(|v| (v, parse_bool(v))) {
        Some(("database", _)) => Some(
            get("database")
                .filter(|d| !d.is_empty())
                .unwrap_or(&user)
                .to_string(),
        ),
        Some((_, Some(true))) => None,
        Some((v, None)) => {
            let mut f = fatal(
                "22023",
                &format!("invalid value for parameter \"replication\": \"{v}\""),
            );
            f.hint = Some("Valid values are: \"false\", 0, \"true\", 1, \"database\".".into());
            return Err(Refused::Fatal(f));
        }
        None | Some((_, Some(false))) => {
            info!(%peer, user = %Printable(&user), "refused a connection that is not a replication connection");
            let mut f = fatal(
                "08004",
                "walrelay serve accepts only replication connections",
            );
            f.hint = Some("Connect with replication=true, as standbys, pg_receivewal and pg_basebackup do; SQL goes to the primary.".into());
            return Err(Refused::Fatal(f));
        }
    };
    if !shared.config.allow.allows(peer.ip()) {
        warn!(%peer, user = %Printable(&user), "refused a connection from an address outside --allow");
        return Err(Refused::Fatal(fatal(
            "28000",
            &format!(
                "connection from host \"{}\" is not allowed: walrelay serve accepts only the networks given with --allow",
                peer.ip()
            ),
        )));
    }
    let channel_binding = if tls {
        shared.config.tls.as_ref().map(|t| t.end_point.clone())
    } else {
        None
    };
    match &shared.config.auth {
        Auth::Trust => {}
        Auth::Scram(users) => {
            let secret = users.secret(&user).cloned();
            if let Err(e) = scram_exchange(io, secret, &user, shared, channel_binding).await {
                return Err(match e {
                    Refused::Fatal(f) if f.code == "28P01" => {
                        warn!(%peer, user = %Printable(&user), "password authentication failed");
                        Refused::Fatal(f)
                    }
                    other => other,
                });
            }
        }
    }
    // Slots of the relay's WAL senders, checked once the client proved who it is.
    if shared.stats.connected() >= shared.config.max_senders {
        return Err(Refused::Fatal(fatal(
            "53300",
            &format!(
                "number of requested standby connections exceeds max_wal_senders (currently {})",
                shared.config.max_senders
            ),
        )));
    }
    let startup = Startup {
        user,
        database,
        application_name: get("application_name").unwrap_or("").to_string(),
        client_encoding: get("client_encoding").unwrap_or("SQL_ASCII").to_string(),
        tls,
    };
    encode_authentication_ok(&mut io.tx.out);
    let major = shared.upstream.major();
    for (name, value) in walsender::startup_parameters(
        major,
        &shared.upstream.server_version,
        &startup.user,
        &startup.application_name,
        &startup.client_encoding,
    ) {
        // Values with a NUL byte cannot come from a startup packet (it is NUL-separated).
        let _ = encode_parameter_status(name, &value, &mut io.tx.out);
    }
    // Tells walrelay's own tools (`walrelay check`) that a relay answers, not a server; libpq
    // keeps unknown parameters without a word.
    let _ = encode_parameter_status(RELAY_PARAMETER, env!("CARGO_PKG_VERSION"), &mut io.tx.out);
    let _ = encode_parameter_status(
        RELAY_CHAIN_PARAMETER,
        &shared.chain.reported(),
        &mut io.tx.out,
    );
    let mut key = [0u8; 4];
    random_bytes(&mut key).map_err(|_| Refused::Quietly)?;
    let _ = encode_backend_key_data(pid, &key, &mut io.tx.out);
    Ok(startup)
}

/// Reads the next `p` message of the exchange.
async fn password_message(io: &mut Io) -> Result<Bytes, Refused> {
    match io.read_message().await {
        Ok(FrontendMessage::Password(body)) => Ok(body),
        Ok(_) => Err(Refused::Fatal(fatal(
            "08P01",
            "expected SASL response, got another message type",
        ))),
        // A client that disconnects here asks its user for a password (psql, libpq tools).
        Err(ReadError::Closed) | Err(ReadError::Io(_)) => Err(Refused::Quietly),
        Err(ReadError::Protocol(e)) => Err(Refused::Fatal(fatal("08P01", &e.to_string()))),
    }
}

async fn scram_exchange(
    io: &mut Io,
    secret: Option<ScramSecret>,
    user: &str,
    shared: &Shared,
    channel_binding: Option<Vec<u8>>,
) -> Result<(), Refused> {
    let mut nonce = [0u8; SERVER_NONCE_BYTES];
    random_bytes(&mut nonce).map_err(|_| Refused::Quietly)?;
    let mock = ScramSecret::mock(user, &shared.mock_secret);
    let mut server = ScramServer::new(secret, mock, &nonce, channel_binding.clone());
    let fail = |e: ScramError, user: &str| {
        let message = match &e {
            ScramError::AuthenticationFailed => {
                format!("password authentication failed for user \"{user}\"")
            }
            other => other.to_string(),
        };
        Refused::Fatal(fatal(e.sqlstate(), &message))
    };
    let _ =
        encode_authentication_sasl(scram::mechanisms(channel_binding.is_some()), &mut io.tx.out);
    io.flush(AUTHENTICATION_TIMEOUT)
        .await
        .map_err(|_| Refused::Quietly)?;
    let initial = SaslInitialResponse::parse(&password_message(io).await?)
        .map_err(|e| Refused::Fatal(fatal("08P01", &e.to_string())))?;
    let client_first = match initial.data {
        Some(d) => d,
        None => {
            let _ = encode_authentication_sasl_continue(b"", &mut io.tx.out);
            io.flush(AUTHENTICATION_TIMEOUT)
                .await
                .map_err(|_| Refused::Quietly)?;
            password_message(io).await?
        }
    };
    let server_first = server
        .client_first(&initial.mechanism, &client_first)
        .map_err(|e| fail(e, user))?;
    let _ = encode_authentication_sasl_continue(&server_first, &mut io.tx.out);
    io.flush(AUTHENTICATION_TIMEOUT)
        .await
        .map_err(|_| Refused::Quietly)?;
    let client_final = password_message(io).await?;
    let server_final = server
        .client_final(&client_final)
        .map_err(|e| fail(e, user))?;
    let _ = encode_authentication_sasl_final(&server_final, &mut io.tx.out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn replication_values_as_the_server_reads_them() {
        for t in ["true", "t", "TRUE", "yes", "y", "on", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "f", "no", "n", "off", "of", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "o", "2", "truex", "database"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }
}

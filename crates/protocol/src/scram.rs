//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL speaks it.
//!
//! A pure state machine, like the client side in `postgres-protocol`: the caller hands in the
//! messages the client sent and the randomness it drew (the server nonce), and gets back what to
//! send — nothing here does IO or draws random numbers, so a recorded exchange replays exactly.
//!
//! ```text
//!  client                                   server
//!  SASLInitialResponse  n,,n=,r=CNONCE  ─►  ScramServer::client_first
//!                   r=CNONCE SNONCE,s=SALT,i=ITER  ◄─  AuthenticationSASLContinue
//!  SASLResponse  c=biws,r=…,p=PROOF     ─►  ScramServer::client_final (verifies PROOF)
//!                          v=SIGNATURE  ◄─  AuthenticationSASLFinal, then AuthenticationOk
//! ```
//!
//! PostgreSQL's rules (`src/backend/libpq/auth-scram.c`):
//! * the user name in the client-first message is ignored (libpq sends an empty one): the user is
//!   the startup packet's;
//! * an authorization identity (`a=`) is refused, as are mandatory extensions (`m=`);
//! * `SCRAM-SHA-256-PLUS` (channel binding `tls-server-end-point`) is offered only over TLS; a
//!   client that says it supports channel binding but thinks the server does not (`y`) while the
//!   server offers it is refused;
//! * an unknown user, or one whose secret is not a SCRAM verifier, runs the whole exchange against
//!   a mock verifier and fails at the end exactly like a wrong password ([`ScramSecret::mock`]), so
//!   the exchange does not tell which users exist;
//! * a failure is reported as "password authentication failed" (SQLSTATE 28P01) — never as a
//!   SCRAM server-error attribute.
//!
//! Secrets are PostgreSQL's verifier format, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! (base64), as stored in `pg_authid.rolpassword` and in PgBouncer's `userlist.txt`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The mechanism names, as advertised in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// `SCRAM_RAW_NONCE_LEN`: bytes of randomness in the server's nonce.
pub const SERVER_NONCE_BYTES: usize = 18;
/// `SCRAM_SHA_256_DEFAULT_ITERATIONS`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Bytes of a salt walrelay generates (PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`).
pub const DEFAULT_SALT_BYTES: usize = 16;

const KEY_LEN: usize = 32;
const BLOCK: usize = 64;

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..KEY_LEN].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut u = hmac_sha256(password, &[salt, &1u32.to_be_bytes()]);
    let mut result = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &[&u]);
        for (r, b) in result.iter_mut().zip(u) {
            *r ^= b;
        }
    }
    result
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are as good as the password for logging in elsewhere: never printed.
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a verifier string is not one.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>): {0}")]
pub struct SecretParseError(&'static str);

impl FromStr for ScramSecret {
    type Err = SecretParseError;

    /// Parses `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>` (`parse_scram_secret`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(SecretParseError("wrong prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(SecretParseError("missing '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(SecretParseError("missing ':' after the iteration count"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or(SecretParseError("bad iteration count"))?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| SecretParseError("salt is not base64"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(SecretParseError("missing ':' between the keys"))?;
        let key = |k: &str| -> Result<[u8; KEY_LEN], SecretParseError> {
            BASE64
                .decode(k)
                .ok()
                .and_then(|v| <[u8; KEY_LEN]>::try_from(v).ok())
                .ok_or(SecretParseError("a key is not 32 bytes of base64"))
        };
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl fmt::Display for ScramSecret {
    /// The verifier in PostgreSQL's format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl ScramSecret {
    /// The verifier of `password` (`scram_build_secret`). The password is used as its bytes:
    /// PostgreSQL applies SASLprep first, which leaves printable ASCII unchanged — callers refuse
    /// other passwords rather than guess at their normalization.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier no password matches, for a user that does not exist: its salt is derived from
    /// the user name and a per-server secret (`scram_mock_salt`), so asking twice for the same
    /// unknown user gets the same salt, as for a real one.
    pub fn mock(user: &str, server_secret: &[u8]) -> ScramSecret {
        let digest = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update(server_secret)
            .finalize();
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..DEFAULT_SALT_BYTES].to_vec(),
            stored_key: [0; KEY_LEN],
            server_key: [0; KEY_LEN],
        }
    }
}

/// Why an exchange failed, and what PostgreSQL reports for it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ScramError {
    /// Wrong password, unknown user, or a proof that does not verify: 28P01.
    #[error("password authentication failed")]
    AuthenticationFailed,
    /// A mechanism we did not offer: 08P01.
    #[error("client selected an invalid SASL authentication mechanism")]
    InvalidMechanism,
    /// A message that breaks the protocol: 08P01.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding negotiation went wrong: 08P01.
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBinding(&'static str),
    /// `a=`: 0A000.
    #[error("client uses authorization identity, but it is not supported")]
    AuthorizationIdentity,
    /// A message in the wrong state.
    #[error("unexpected SCRAM message")]
    OutOfOrder,
}

impl ScramError {
    /// The SQLSTATE PostgreSQL reports for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::AuthenticationFailed => "28P01",
            ScramError::AuthorizationIdentity => "0A000",
            _ => "08P01",
        }
    }
}

/// The mechanisms to advertise: `-PLUS` first, only when channel binding data is available (TLS).
pub fn mechanisms(channel_binding: bool) -> &'static [&'static str] {
    if channel_binding {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for the client-first message.
    Start,
    /// Server-first sent.
    Continued {
        /// `c=` expected in the client-final message: base64 of the GS2 header (+ binding data).
        cbind_input: String,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

/// One SCRAM-SHA-256 exchange, server side (see the module documentation).
pub struct ScramServer {
    secret: ScramSecret,
    /// The user is unknown or has no usable secret: fail at the end whatever the proof.
    doomed: bool,
    server_nonce: String,
    /// `tls-server-end-point` data (the hash of the server certificate) when TLS is on.
    channel_binding: Option<Vec<u8>>,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("doomed", &self.doomed)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn printable(s: &str) -> bool {
    // RFC 5802 `printable`: %x21-2B / %x2D-7E (no comma).
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Splits `k=value` attributes.
fn attribute(part: Option<&str>, key: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("message ends early"))?;
    let mut chars = part.chars();
    if chars.next() != Some(key) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

impl ScramServer {
    /// An exchange against `secret` (`None`: unknown user — the mock verifier of `user` is
    /// used and the exchange fails). `server_nonce` is [`SERVER_NONCE_BYTES`] random bytes;
    /// `channel_binding` the `tls-server-end-point` data when the connection is TLS.
    pub fn new(
        secret: Option<ScramSecret>,
        mock: ScramSecret,
        server_nonce: &[u8],
        channel_binding: Option<Vec<u8>>,
    ) -> ScramServer {
        let doomed = secret.is_none();
        ScramServer {
            secret: secret.unwrap_or(mock),
            doomed,
            server_nonce: BASE64.encode(server_nonce),
            channel_binding,
            state: State::Start,
        }
    }

    /// The client-first message (the SASLInitialResponse's data) for `mechanism`; returns the
    /// server-first message to send in AuthenticationSASLContinue.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Start) {
            return Err(ScramError::OutOfOrder);
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            _ => return Err(ScramError::InvalidMechanism),
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or("");
        let authzid = parts
            .next()
            .ok_or(ScramError::Malformed("missing GS2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        match (flag, plus) {
            ("n", false) => {}
            ("y", false) if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBinding(
                    "the client supports SCRAM channel binding but thinks the server does not; this server does support channel binding",
                ))
            }
            ("y", false) => {}
            ("p=tls-server-end-point", true) => {}
            (f, false) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBinding(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
                ))
            }
            (f, true) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBinding(
                    "unsupported SCRAM channel-binding type (only tls-server-end-point)",
                ))
            }
            (_, true) => {
                return Err(ScramError::ChannelBinding(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
                ))
            }
            _ => return Err(ScramError::Malformed("unexpected channel-binding flag")),
        }
        if !authzid.is_empty() {
            return Err(ScramError::AuthorizationIdentity);
        }
        let gs2_header = &text[..text.len() - bare.len()];
        let mut attrs = bare.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        attribute(first, 'n')?;
        let client_nonce = attribute(attrs.next(), 'r')?;
        if client_nonce.is_empty() || !printable(client_nonce) {
            return Err(ScramError::Malformed("the client nonce is not printable"));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let mut cbind = gs2_header.as_bytes().to_vec();
        if plus {
            cbind.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        self.state = State::Continued {
            cbind_input: BASE64.encode(cbind),
            nonce,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok(server_first.into_bytes())
    }

    /// The client-final message; returns the server-final message (`v=…`) for
    /// AuthenticationSASLFinal when the proof verifies.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::Continued {
            cbind_input,
            nonce,
            client_first_bare,
            server_first,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let c = attribute(attrs.next(), 'c')?;
        if c != cbind_input {
            return Err(ScramError::ChannelBinding(
                "SCRAM channel binding check failed",
            ));
        }
        let r = attribute(attrs.next(), 'r')?;
        if r != nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        // Further attributes are extensions, ignored as PostgreSQL does.
        let proof: [u8; KEY_LEN] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sha256(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; KEY_LEN];
        for (i, k) in client_key.iter_mut().enumerate() {
            *k = proof[i] ^ client_signature[i];
        }
        let computed: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        // Constant time: the comparison must not tell how many leading bytes matched.
        let diff = computed
            .iter()
            .zip(self.secret.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 || self.doomed {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// RFC 7677, section 3: user "user", password "pencil".
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_secret() -> ScramSecret {
        ScramSecret::from_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
    }

    /// A server whose nonce is the RFC's (which is not base64 of anything: set it directly).
    fn rfc_server(secret: Option<ScramSecret>) -> ScramServer {
        let mut s = ScramServer::new(secret, ScramSecret::mock("user", b"k"), b"", None);
        s.server_nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        s
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (RFC 4231 case 6).
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn replays_the_rfc_7677_exchange() {
        let mut s = rfc_server(Some(rfc_secret()));
        let first = s
            .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), RFC_SERVER_FIRST);
        let fin = s.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&fin).unwrap(), RFC_SERVER_FINAL);
        // The same exchange for a user we do not know fails at the end, the same way.
        let mut s = rfc_server(None);
        s.client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(
            s.client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(ScramError::AuthenticationFailed)
        );
        // A wrong password.
        let mut s = rfc_server(Some(ScramSecret::from_password(
            "pencils",
            &BASE64.decode(RFC_SALT).unwrap(),
            4096,
        )));
        s.client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(
            s.client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    #[test]
    fn verifier_format_round_trips_and_matches_postgres_protocol() {
        let secret = rfc_secret();
        let text = secret.to_string();
        assert!(
            text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{text}"
        );
        assert_eq!(text.parse::<ScramSecret>(), Ok(secret.clone()));
        // The verifier postgres-protocol computes (what PostgreSQL stores) parses and has the
        // keys our derivation gives for its salt.
        let theirs: ScramSecret = postgres_protocol::password::scram_sha_256(b"s3cret pass")
            .parse()
            .unwrap();
        let ours = ScramSecret::from_password("s3cret pass", &theirs.salt, theirs.iterations);
        assert_eq!(theirs, ours);
        assert!(!format!("{ours:?}").contains(&BASE64.encode(ours.stored_key)));
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
        ] {
            assert!(bad.parse::<ScramSecret>().is_err(), "{bad:?}");
        }
    }

    /// The whole exchange against the client walrelay's own client uses (postgres-protocol's
    /// `ScramSha256`, random client nonce), with a fixed server nonce.
    fn exchange(
        password: &str,
        secret: &ScramSecret,
        binding: ChannelBinding,
        server_binding: Option<Vec<u8>>,
        mechanism: &str,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let mut server = ScramServer::new(
            Some(secret.clone()),
            ScramSecret::mock("u", b"k"),
            &[7u8; SERVER_NONCE_BYTES],
            server_binding,
        );
        let first = server.client_first(mechanism, client.message())?;
        assert!(std::str::from_utf8(&first)
            .unwrap()
            .contains(&BASE64.encode([7u8; SERVER_NONCE_BYTES])));
        client.update(&first).expect("client accepts server-first");
        let fin = server.client_final(client.message())?;
        client
            .finish(&fin)
            .expect("client verifies the server signature");
        Ok(())
    }

    #[test]
    fn against_the_client_implementation() {
        let secret: ScramSecret = postgres_protocol::password::scram_sha_256(b"rep-pass")
            .parse()
            .unwrap();
        /// The client's channel binding: `y`, `n`, or bound to a certificate hash of 32 × byte.
        enum Cb {
            Unrequested,
            Unsupported,
            Bound(u8),
        }
        let y_refused = ScramError::ChannelBinding(
            "the client supports SCRAM channel binding but thinks the server does not; this server does support channel binding",
        );
        let cases = [
            ("rep-pass", Cb::Unrequested, None, SCRAM_SHA_256, Ok(())),
            (
                "rep-pasS",
                Cb::Unrequested,
                None,
                SCRAM_SHA_256,
                Err(ScramError::AuthenticationFailed),
            ),
            // Over TLS: the client hashes the certificate the way the server does.
            (
                "rep-pass",
                Cb::Bound(9),
                Some(9),
                SCRAM_SHA_256_PLUS,
                Ok(()),
            ),
            // Bound to another certificate (a man in the middle): refused.
            (
                "rep-pass",
                Cb::Bound(8),
                Some(9),
                SCRAM_SHA_256_PLUS,
                Err(ScramError::ChannelBinding(
                    "SCRAM channel binding check failed",
                )),
            ),
            // "y": the client could bind, but thinks we cannot — refused when we can.
            (
                "rep-pass",
                Cb::Unrequested,
                Some(9),
                SCRAM_SHA_256,
                Err(y_refused),
            ),
            // Without TLS "n" is fine, and -PLUS was never offered.
            ("rep-pass", Cb::Unsupported, None, SCRAM_SHA_256, Ok(())),
            (
                "rep-pass",
                Cb::Unrequested,
                None,
                SCRAM_SHA_256_PLUS,
                Err(ScramError::InvalidMechanism),
            ),
        ];
        for (password, cb, server, mechanism, want) in cases {
            let binding = match cb {
                Cb::Unrequested => ChannelBinding::unrequested(),
                Cb::Unsupported => ChannelBinding::unsupported(),
                Cb::Bound(b) => ChannelBinding::tls_server_end_point(vec![b; 32]),
            };
            let server_binding = server.map(|b| vec![b; 32]);
            assert_eq!(
                exchange(password, &secret, binding, server_binding, mechanism),
                want,
                "{password} {mechanism}"
            );
        }
        assert_eq!(mechanisms(false), [SCRAM_SHA_256]);
        assert_eq!(mechanisms(true), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    }

    #[test]
    fn malformed_messages() {
        for (first, want) in [
            ("", ScramError::Malformed("missing GS2 header")),
            ("n,,", ScramError::Malformed("unexpected attribute")),
            ("n,a=someone,n=,r=abc", ScramError::AuthorizationIdentity),
            (
                "n,,m=ext,n=,r=abc",
                ScramError::Malformed("mandatory extensions are not supported"),
            ),
            (
                "n,,n=,r=",
                ScramError::Malformed("the client nonce is not printable"),
            ),
            (
                "n,,n=,r=ab\u{7f}",
                ScramError::Malformed("the client nonce is not printable"),
            ),
            (
                "x,,n=,r=abc",
                ScramError::Malformed("unexpected channel-binding flag"),
            ),
            ("n,,r=abc", ScramError::Malformed("unexpected attribute")),
        ] {
            let mut s = rfc_server(Some(rfc_secret()));
            assert_eq!(
                s.client_first(SCRAM_SHA_256, first.as_bytes()),
                Err(want),
                "{first:?}"
            );
        }
        assert_eq!(
            rfc_server(None).client_first("PLAIN", b"n,,n=,r=a"),
            Err(ScramError::InvalidMechanism)
        );
        assert_eq!(
            rfc_server(None).client_first(SCRAM_SHA_256, &[0xff, 0xfe]),
            Err(ScramError::Malformed("not UTF-8"))
        );
        let finals = [
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "c=biws,r=rOprNGfwEbeRWgbNEkqOXXX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=short",
            "r=x,c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        ];
        for f in finals {
            let mut s = rfc_server(Some(rfc_secret()));
            s.client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
                .unwrap();
            assert!(s.client_final(f.as_bytes()).is_err(), "{f:?}");
            assert_eq!(
                s.client_final(RFC_CLIENT_FINAL.as_bytes()),
                Err(ScramError::OutOfOrder),
                "one attempt per exchange"
            );
        }
        let mut s = rfc_server(Some(rfc_secret()));
        assert_eq!(
            s.client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn mock_salts_are_stable_per_user() {
        let a = ScramSecret::mock("alice", b"server");
        assert_eq!(a, ScramSecret::mock("alice", b"server"));
        assert_ne!(a.salt, ScramSecret::mock("bob", b"server").salt);
        assert_ne!(a.salt, ScramSecret::mock("alice", b"other").salt);
        assert_eq!(a.salt.len(), DEFAULT_SALT_BYTES);
    }
}

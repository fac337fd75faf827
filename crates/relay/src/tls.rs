//! `--tls-cert` / `--tls-key`: TLS for downstream connections, and the channel binding data
//! (`tls-server-end-point`) that SCRAM-SHA-256-PLUS binds an exchange to.
//!
//! A client asks with SSLRequest; the relay answers `S` and runs the handshake when it has a
//! certificate, `N` otherwise (libpq's `sslmode=prefer` then goes on in plain text,
//! `require` gives up).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// The relay's TLS identity.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    /// `tls-server-end-point` data: the hash of the leaf certificate (RFC 5929).
    pub(crate) end_point: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a certificate chain (leaf first) and its key, both PEM.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let chain = walrelay_client::load_pem_certs(cert)?;
        let key = walrelay_client::load_pem_key(key)?;
        let end_point = match chain.first() {
            Some(leaf) => walrelay_client::tls_server_end_point(leaf)?,
            None => return Err(format!("{} holds no certificate", cert.display())),
        };
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate {} and its key: {e}", cert.display()))?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            end_point,
        })
    }
}

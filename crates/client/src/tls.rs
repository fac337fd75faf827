//! TLS for PostgreSQL connections with libpq's `sslmode` semantics, on rustls.
//!
//! * `require` without a root certificate: encrypt, trust any certificate (libpq does the same). With a
//!   root certificate configured, `require` verifies the chain like `verify-ca` (libpq's documented
//!   backward-compatible behaviour).
//! * `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
//! * `verify-full`: chain and host name.
//!
//! Channel binding (`tls-server-end-point`, RFC 5929) hashes the server's leaf certificate with the hash of
//! its signature algorithm, SHA-256 for MD5/SHA-1 signatures.

use std::fs;
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::Digest;

use crate::params::{RootCerts, SslMode, TlsParams};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration for `params`. Errors are one-line and name the file involved.
pub fn client_config(params: &TlsParams) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;

    let verifier: Arc<dyn ServerCertVerifier> = match (params.mode, &params.root_certs) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "sslmode={} needs a root certificate: set sslrootcert to the CA file (or \"system\"), or put it at ~/.postgresql/root.crt",
                if params.mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            ))
        }
        (SslMode::VerifyFull, Some(roots)) => webpki_verifier(roots, provider.clone())?,
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(IgnoreHostname {
            inner: webpki_verifier(roots, provider.clone())?,
        }),
        (_, _) => Arc::new(AcceptAnyCertificate { provider }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&params.client_cert, &params.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?
        }
        (Some(cert), None) => {
            return Err(format!(
                "client certificate {} given without sslkey",
                cert.display()
            ))
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = params.sni;
    // PostgreSQL 17's direct SSL negotiation requires ALPN "postgresql"; with the traditional SSLRequest
    // the server accepts it too.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

fn webpki_verifier(
    roots: &RootCerts,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            for c in load_certs(path)? {
                store
                    .add(c)
                    .map_err(|e| format!("root certificate {}: {e}", path.display()))?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(
                    "sslrootcert=system: no trusted certificates found in the system store".into(),
                );
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| format!("root certificates: {e}"))
}

/// The PEM certificates of `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = fs::File::open(path).map_err(|e| {
        format!(
            "could not open certificate file \"{}\": {e}",
            path.display()
        )
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| {
        format!(
            "could not read certificate file \"{}\": {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "certificate file \"{}\" holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The PEM private key of `path`, refused when others may read it (libpq's and the server's rule).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let could_not_open = |e: std::io::Error| {
        format!(
            "could not open private key file \"{}\": {e}",
            path.display()
        )
    };
    let meta = fs::metadata(path).map_err(could_not_open)?;
    // libpq: the key must not be group/world accessible, except 0640 owned by root (for system-wide keys).
    let mode = meta.mode() & 0o777;
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if !ok {
        return Err(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            path.display()
        ));
    }
    let f = fs::File::open(path).map_err(could_not_open)?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| {
            format!(
                "could not read private key file \"{}\": {e}",
                path.display()
            )
        })?
        .ok_or_else(|| format!("private key file \"{}\" holds no PEM key", path.display()))
}

/// The rustls name for a host: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("invalid host name for TLS: {host:?}"))
}

/// `tls-server-end-point` channel binding data for the server's leaf certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("could not parse the server certificate: {e}"))?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    // RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256; otherwise the signature's own hash.
    let hash = match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert_der).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert_der).to_vec(),
        // md5/sha1/sha256 with RSA, ecdsa-with-SHA1/SHA256, RSASSA-PSS (SHA-256 by PostgreSQL's default)
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.10" => sha2::Sha256::digest(cert_der).to_vec(),
        other => {
            return Err(format!(
                "could not determine the server certificate's signature hash (algorithm {other}) for channel binding"
            ))
        }
    };
    Ok(hash)
}

/// `sslmode=require` without a root certificate: the connection is encrypted but the peer is not
/// authenticated. Handshake signatures are still verified so the key exchange is sound.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: a full chain check, but a certificate issued for another name is accepted.
#[derive(Debug)]
struct IgnoreHostname {
    inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for IgnoreHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

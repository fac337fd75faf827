//! Test certificates: a throwaway CA, a server certificate for `localhost`/127.0.0.1, and client
//! certificates whose CN is a role name (what pg_hba's `cert` method and `clientcert=verify-full` check).
//!
//! Everything is generated with rcgen at cluster creation; nothing is read from or written to the
//! system trust store. ECDSA P-256 keys keep generation fast.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::config::{quote_conninfo_value, render_conninfo};
use crate::error::Result;

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throwaway certificate authority.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new self-signed CA ("walrelay test CA").
    pub fn new() -> Result<TestCa> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "walrelay test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(next_serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    /// The CA certificate (what clients put in `sslrootcert`).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1 (both as subject alternative names, which
    /// libpq's `sslmode=verify-full` checks).
    pub fn issue_server(&self) -> Result<IssuedCert> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with CN `user`: the `cert` auth method maps the CN to the role name.
    pub fn issue_client(&self, user: &str) -> Result<IssuedCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<IssuedCert> {
        params.serial_number = Some(next_serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Distinct serial numbers for every certificate this process issues (OpenSSL tolerates duplicates,
/// but a verifier that caches by issuer+serial would not).
fn next_serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Positive (top bit clear) and never zero.
    SerialNumber::from(((nanos ^ (n << 40)) & 0x7fff_ffff_ffff_ffff) | 1)
}

/// A client certificate and key written to files, for `sslcert`/`sslkey`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub user: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    /// `sslcert=… sslkey=…` to append to a conninfo.
    pub fn conninfo_params(&self) -> String {
        render_conninfo(&[
            ("sslcert", self.cert.to_string_lossy()),
            ("sslkey", self.key.to_string_lossy()),
        ])
    }
}

/// The TLS files of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsPaths {
    /// `sslmode=verify-full sslrootcert=…`: what a client needs to check this server.
    pub fn verify_full_params(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={}",
            quote_conninfo_value(&self.ca_cert.to_string_lossy())
        )
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_server_and_client_certs() {
        let ca = TestCa::new().unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca.issue_server().unwrap();
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        let client = ca.issue_client("replicator").unwrap();
        assert_ne!(client.cert_pem, server.cert_pem);
    }

    #[test]
    fn serials_differ() {
        assert_ne!(next_serial(), next_serial());
    }

    #[test]
    fn client_params_are_quoted() {
        let c = ClientCert {
            user: "u".into(),
            cert: "/tmp/a b/u.crt".into(),
            key: "/tmp/u.key".into(),
        };
        assert_eq!(
            c.conninfo_params(),
            "sslcert='/tmp/a b/u.crt' sslkey=/tmp/u.key"
        );
    }
}

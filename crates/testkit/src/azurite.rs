//! A real Azure Blob Storage server on loopback for tests: Azurite, Microsoft's emulator (`npm`
//! package `azurite`; `scripts/install-azurite.sh` finds or installs it, for `scripts/test.sh` and
//! for [`AzuriteServer::start`] alike).
//!
//! Every server gets its own temp directory and free port, so tests run in parallel. Azurite has
//! one well-known account (`devstoreaccount1`) and key; walrelay reaches it through the
//! `object_store` crate's emulator settings ([`AzuriteServer::env`]). The container is created at
//! start with a signed Create Container request (Shared Key), as a storage administrator would.
//!
//! `azurite-blob` runs under the same guard as the S3 server ([`crate::loopback`]): when
//! the test process dies without running `Drop`, the server stops.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Result, TestkitError};
use crate::loopback::{free_ports, installed_program, log_tail, server_dir, GuardedServer};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The storage service version our own request speaks.
const API_VERSION: &str = "2021-08-06";

/// How long Azurite (a Node.js program) may take to come up: about a second on an idle machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Azurite blob service with one container.
pub struct AzuriteServer {
    dir: tempfile::TempDir,
    container: String,
    port: u16,
    running: Option<GuardedServer>,
}

/// Finds `azurite-blob` (installing it from npm if needed) with `scripts/install-azurite.sh`.
pub fn find_azurite() -> Result<PathBuf> {
    installed_program("install-azurite.sh")
}

impl AzuriteServer {
    /// Starts a server, waits until it answers, and creates `container` (3 to 63 lower-case
    /// letters, digits and dashes).
    pub fn start(container: &str) -> Result<AzuriteServer> {
        let program = find_azurite()?;
        let dir = server_dir("walrelay-azurite-")?;
        let [port] = free_ports::<1>()?;
        let mut server = AzuriteServer {
            dir,
            container: container.to_string(),
            port,
            running: None,
        };
        server.spawn(&program)?;
        server.create_container()?;
        Ok(server)
    }

    fn spawn(&mut self, program: &Path) -> Result<()> {
        let data = self.dir.path().join("data");
        fs::create_dir_all(&data).map_err(|e| TestkitError::io("create", &data, e))?;
        let args: Vec<OsString> = vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            self.port.to_string().into(),
            "--location".into(),
            data.into(),
            // object_store may speak a newer service version than this Azurite knows.
            "--skipApiVersionCheck".into(),
            "--disableProductStyleUrl".into(),
        ];
        let server = GuardedServer::spawn(
            "azurite-blob",
            program,
            &args,
            &[],
            self.dir.path(),
            &self.log_path(),
            self.port,
        )?;
        let server = server.ready(START_TIMEOUT, || true, || self.log_tail(30))?;
        self.running = Some(server);
        Ok(())
    }

    /// Create Container, signed with the account key (Shared Key authorization).
    fn create_container(&self) -> Result<()> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let to_sign = shared_key_string_to_sign("PUT", &date, &self.container);
        let signature = sign(&to_sign)?;
        let request = format!(
            "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\n\
             x-ms-version: {API_VERSION}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\n\
             Connection: close\r\n\r\n",
            container = self.container,
            port = self.port,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let io = |e| TestkitError::io("create the container on", addr.to_string(), e);
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        conn.write_all(request.as_bytes()).map_err(io)?;
        let mut response = String::new();
        conn.read_to_string(&mut response).map_err(io)?;
        let status = response.lines().next().unwrap_or_default();
        if status.starts_with("HTTP/1.1 201") {
            Ok(())
        } else {
            Err(TestkitError::Config(format!(
                "Azurite refused to create container {}: {response}",
                self.container
            )))
        }
    }

    /// `az://CONTAINER/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("az://{}/{prefix}", self.container)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a client needs: the `object_store` crate's emulator mode, pointed at this
    /// server, with the well-known account.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY.to_string()),
        ]
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("azurite.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Stops the server (the guard's SIGTERM, then SIGKILL after 15 s).
    pub fn stop(&mut self) {
        if let Some(server) = self.running.take() {
            server.stop();
        }
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Shared Key string to sign for a body-less request on a container (`restype=container`):
/// the verb, eleven empty standard headers, the `x-ms-` headers in order, the canonical resource.
fn shared_key_string_to_sign(verb: &str, date: &str, container: &str) -> String {
    format!(
        "{verb}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
         /{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    )
}

/// Base64 of HMAC-SHA256 over `text` with the account key.
fn sign(text: &str) -> Result<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(ACCOUNT_KEY)
        .map_err(|e| TestkitError::Config(format!("the Azurite account key: {e}")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|e| TestkitError::Config(format!("the Azurite account key: {e}")))?;
    mac.update(text.as_bytes());
    Ok(b64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_has_the_shared_key_layout() {
        let s = shared_key_string_to_sign("PUT", "Fri, 04 Dec 2026 16:16:47 GMT", "wal");
        let lines: Vec<&str> = s.split('\n').collect();
        assert_eq!(lines[0], "PUT");
        assert!(lines[1..12].iter().all(|l| l.is_empty()), "{lines:?}");
        assert_eq!(lines[12], "x-ms-date:Fri, 04 Dec 2026 16:16:47 GMT");
        assert_eq!(lines[13], format!("x-ms-version:{API_VERSION}"));
        assert_eq!(lines[14], "/devstoreaccount1/devstoreaccount1/wal");
        assert_eq!(lines[15], "restype:container");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_account_key() {
        // Known answer, computed independently with Python's hmac module.
        assert_eq!(
            sign("PUT\nrestype:container").unwrap(),
            "elmD705s21Dwaux3qJpSyZMF/PL6H0TM5LfoFdN5/Rs="
        );
    }
}

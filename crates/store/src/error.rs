//! The store crate's one error type, classified for retries and exit codes.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use walrelay_archive::ArchiveError;
use walrelay_client::{Classify, ErrorClass};
use walrelay_durable::DurableError;

use crate::location::Service;

/// Everything that can go wrong with an archive in object storage.
#[derive(Debug, Error)]
pub enum StoreError {
    /// `-D` names no usable archive.
    #[error("invalid archive location {input:?}: {reason}")]
    BadLocation { input: String, reason: String },

    /// The store's client cannot be configured from the environment.
    #[error("cannot set up {location}: {reason}")]
    Setup { location: String, reason: String },

    /// The store answered with an error or could not be reached. The text of `source` comes from
    /// object_store, which never includes credentials.
    #[error("{action} {object}: {source}; {}", remote_fix(.object, .source))]
    Remote {
        action: &'static str,
        object: String,
        #[source]
        source: object_store::Error,
    },

    /// Put-if-absent found other bytes under the name: never replaced, never ignored.
    #[error("{0}")]
    Conflict(Box<Conflict>),

    /// An object or spool file that is not what its name says (size, decoding, checksum).
    #[error("{object} is damaged: {reason}; restore it from another copy or re-upload it from the spool")]
    Corrupt { object: String, reason: String },

    #[error(transparent)]
    Durable(#[from] DurableError),

    /// The store holds several clusters and nothing says which one is meant.
    #[error("{location} holds the WAL of several clusters (system identifiers {found}): pass --system-identifier ID (walrelay restore run by a server picks its own cluster from the data directory)")]
    AmbiguousSystem { location: String, found: String },

    #[error(transparent)]
    Archive(#[from] ArchiveError),

    /// Nothing of the cluster is stored: a wrong URL or prefix must not look like "not in the
    /// archive" to restore_command (PostgreSQL would end recovery early).
    #[error("{location} holds no WAL of the cluster with system identifier {system_identifier}: check the URL and its prefix")]
    NoCluster {
        location: String,
        system_identifier: u64,
    },

    /// WAL of another cluster where one cluster's WAL is expected.
    #[error("{what} belongs to the cluster with system identifier {found}, but this archive is for {expected}: a spool or archive must hold one cluster's WAL only")]
    SystemMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
}

/// Two different contents under one object name.
#[derive(Debug, Error)]
#[error("{object} exists with different content (stored SHA-256 {stored}, ours {ours}): objects are never replaced; find out which receiver wrote it — two clusters or receivers must not share a prefix and system identifier")]
pub struct Conflict {
    pub object: String,
    pub stored: String,
    pub ours: String,
}

/// Why a store turned walrelay away for good, read from its answer. object_store reports a
/// failed listing's 401, 403 and 404 as generic errors carrying the status and the service's code,
/// so most of these are read from the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// No credentials in the environment: the client asked the instance's metadata service for a
    /// token (AWS IMDS `…/latest/api/token`, GCP and Azure token requests) and got none — not a
    /// cloud VM, or no identity attached.
    NoCredentials,
    /// S3 says the request was signed for, or sent to, another region than the bucket's
    /// (`AuthorizationHeaderMalformed` names the expected region; `PermanentRedirect` the
    /// endpoint): AWS_REGION is wrong.
    WrongRegion,
    /// The credentials were turned away, or lack the permission.
    BadCredentials,
    /// No such bucket or container.
    NoBucket,
}

fn refusal_of(e: &object_store::Error) -> Option<Refusal> {
    match e {
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => return Some(Refusal::BadCredentials),
        object_store::Error::NotFound { .. } => return Some(Refusal::NoBucket),
        _ => {}
    }
    let text = e.to_string();
    let says = |codes: &[&str]| codes.iter().any(|code| text.contains(code));
    if says(&["NoSuchBucket", "ContainerNotFound"]) {
        Some(Refusal::NoBucket)
    } else if says(&[
        "token request",
        "169.254.169.254",
        // AWS IMDSv2 at another address (AWS_METADATA_ENDPOINT, an ECS or EKS agent).
        "/latest/api/token",
    ]) {
        Some(Refusal::NoCredentials)
    } else if says(&["AuthorizationHeaderMalformed", "PermanentRedirect"]) {
        Some(Refusal::WrongRegion)
    } else if says(&[
        "status code: 401",
        "status code: 403",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "AuthenticationFailed",
        "AuthorizationFailure",
    ]) {
        Some(Refusal::BadCredentials)
    } else {
        None
    }
}

fn remote_fix(object: &str, e: &object_store::Error) -> String {
    match refusal_of(e) {
        Some(Refusal::BadCredentials) => {
            "check the credentials in the environment and the bucket's permissions".into()
        }
        Some(Refusal::NoBucket) => {
            let bucket = match Service::of_url(object) {
                Some(Service::Azure) => "container",
                _ => "bucket",
            };
            format!("check the {bucket} name and that it exists")
        }
        Some(Refusal::NoCredentials) => match Service::of_url(object) {
            Some(service) => format!("no usable credentials: {}", service.credentials_fix()),
            None => "no usable credentials: set the store's credentials in the environment".into(),
        },
        Some(Refusal::WrongRegion) => {
            "set AWS_REGION to the bucket's region (the service's answer names it)".into()
        }
        None => "check the endpoint, the network and the store's health".into(),
    }
}

impl StoreError {
    /// A local file operation failed (the spool, the prefetch cache, a `file://` store).
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Durable(DurableError::new(action, path, source))
    }

    pub(crate) fn remote(
        action: &'static str,
        object: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        StoreError::Remote {
            action,
            object: object.into(),
            source,
        }
    }

    /// True when the store turned walrelay away for a reason that waiting does not fix: no
    /// credentials (the client fell back to an instance metadata service that gave none), bad
    /// ones, no permission, no such bucket or container, a client that cannot be set up. False for
    /// a store that is down, slow or unreachable, which a spool rides out.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Setup { .. } => true,
            StoreError::Remote { source, .. } => refusal_of(source).is_some(),
            _ => false,
        }
    }

    /// True when the content of the archive is wrong (damaged or conflicting objects): restore
    /// reports it with its "damaged" exit code.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::Conflict(_) => true,
            StoreError::Archive(a) => a.is_corruption(),
            _ => false,
        }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        use object_store::Error as O;
        match self {
            StoreError::BadLocation { .. }
            | StoreError::AmbiguousSystem { .. }
            | StoreError::NoCluster { .. } => ErrorClass::Usage,
            StoreError::Setup { .. } => ErrorClass::Connection,
            StoreError::Remote { source, .. } => match source {
                s if refusal_of(s).is_some() => ErrorClass::Connection,
                O::NotImplemented { .. } | O::NotSupported { .. } => ErrorClass::Connection,
                _ => ErrorClass::Transient,
            },
            StoreError::Conflict(_)
            | StoreError::Corrupt { .. }
            | StoreError::SystemMismatch { .. }
            | StoreError::Durable(_) => ErrorClass::Local,
            StoreError::Archive(a) => match a {
                ArchiveError::BadFileName { .. }
                | ArchiveError::BadCompression { .. }
                | ArchiveError::UnknownSegmentSize { .. } => ErrorClass::Usage,
                _ => ErrorClass::Local,
            },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "GCS",
            source: message.into(),
        }
    }

    #[test]
    fn missing_credentials_name_the_services_variables() {
        let e = StoreError::remote(
            "list",
            "gs://b/p/",
            generic("Error performing token request: 403 Forbidden"),
        );
        let text = e.to_string();
        assert!(text.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{text}");
        let e = StoreError::remote(
            "list",
            "az://c/p/",
            generic("Error performing token request: 403"),
        );
        assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT_KEY"), "{e}");
        let e = StoreError::remote(
            "list",
            "s3://b/p/",
            generic("Error performing PUT http://169.254.169.254/latest/api/token: 403"),
        );
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        // Anything else is about reaching the store.
        let e = StoreError::remote("list", "gs://b/p/", generic("connection refused"));
        assert!(e
            .to_string()
            .ends_with("check the endpoint, the network and the store's health"));
    }

    #[test]
    fn refusals_are_told_from_outages() {
        let refused = [
            generic("Error performing PUT http://169.254.169.254/latest/api/token: 403"),
            generic("Error performing token request: connection refused"),
            generic("Error performing PUT http://127.0.0.1:9/latest/api/token: refused"),
            generic("Received 404 Not Found: <Code>NoSuchBucket</Code>"),
            generic("Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>"),
            object_store::Error::PermissionDenied {
                path: "p".into(),
                source: "SignatureDoesNotMatch".into(),
            },
            object_store::Error::Unauthenticated {
                path: "p".into(),
                source: "no".into(),
            },
        ];
        for e in refused {
            let e = StoreError::remote("list", "s3://b/p/", e);
            assert!(e.is_refusal(), "{e}");
        }
        let down = [
            generic("error sending request: connection refused"),
            generic("Received 503 Service Unavailable"),
        ];
        for e in down {
            let e = StoreError::remote("list", "s3://b/p/", e);
            assert!(!e.is_refusal(), "{e}");
        }
        let setup = StoreError::Setup {
            location: "az://c/p".into(),
            reason: "Account must be specified".into(),
        };
        assert!(setup.is_refusal());
        let missing = StoreError::remote(
            "list",
            "s3://b/p/",
            generic("Received 404: <Code>NoSuchBucket</Code>"),
        );
        assert!(missing
            .to_string()
            .ends_with("check the bucket name and that it exists"));
        let region = StoreError::remote(
            "list",
            "s3://b/p/",
            generic(
                "Server returned non-2xx status code: 400 Bad Request: <Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message>",
            ),
        );
        assert!(region.is_refusal(), "{region}");
        assert!(
            region.to_string().contains("expecting 'eu-west-1'"),
            "{region}"
        );
        assert!(
            region
                .to_string()
                .ends_with("set AWS_REGION to the bucket's region (the service's answer names it)"),
            "{region}"
        );
    }
}

//! Where an archive lives, as the user names it with `-D`: a plain path (a local directory in
//! pg_receivewal's layout, as before) or a URL — `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`,
//! `az://CONTAINER/PREFIX` (also `azure://`), `file:///PATH` — for an archive in object storage's
//! layout (see [`crate::layout`]).
//!
//! Credentials never go into the URL: they come from the environment (`AWS_ACCESS_KEY_ID`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_KEY`, instance and web identities, …).
//! A URL with a user or password in it is refused, and the refusal does not repeat it.

use std::fmt;
use std::path::PathBuf;

use crate::error::StoreError;

/// The object storage services walrelay speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Amazon S3 and S3-compatible stores (MinIO, SeaweedFS, Ceph, R2, …).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// A local directory holding the object layout (`file://`): for NFS mounts and tests.
    File,
}

impl Service {
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Gcs => "gs",
            Service::Azure => "az",
            Service::File => "file",
        }
    }

    /// The service of a URL or object name written `SCHEME://…` (as errors name objects).
    pub fn of_url(url: &str) -> Option<Service> {
        let (scheme, _) = url.split_once("://")?;
        match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Some(Service::S3),
            "gs" | "gcs" => Some(Service::Gcs),
            "az" | "azure" => Some(Service::Azure),
            "file" => Some(Service::File),
            _ => None,
        }
    }

    /// What to set when the service's client finds no usable credentials.
    pub fn credentials_fix(self) -> &'static str {
        match self {
            Service::S3 => "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_REGION, and AWS_ENDPOINT_URL for an S3-compatible store) in the environment",
            Service::Gcs => "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file in the environment",
            Service::Azure => "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY in the environment",
            Service::File => "check that the directory exists and is readable",
        }
    }
}

/// A parsed archive URL: service, bucket (container; empty for `file://`), prefix inside it (no
/// leading or trailing `/`), and for `file://` the directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreUrl {
    pub service: Service,
    pub bucket: String,
    pub prefix: String,
    /// `file://` only: the root directory.
    pub path: Option<PathBuf>,
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.service) {
            (Some(p), Service::File) => write!(f, "file://{}", p.display()),
            _ if self.prefix.is_empty() => write!(f, "{}://{}", self.service.scheme(), self.bucket),
            _ => write!(
                f,
                "{}://{}/{}",
                self.service.scheme(),
                self.bucket,
                self.prefix
            ),
        }
    }
}

/// What `-D` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// A local directory in pg_receivewal's layout.
    Dir(PathBuf),
    /// Object storage (or `file://`) in walrelay's object layout.
    Store(StoreUrl),
}

impl ArchiveLocation {
    /// Parses a `-D` value (see the module docs).
    pub fn parse(input: &str) -> Result<ArchiveLocation, StoreError> {
        let Some((scheme, rest)) = input.split_once("://") else {
            if input.is_empty() {
                return Err(bad(
                    input,
                    "empty; give a directory or a URL like s3://bucket/prefix",
                ));
            }
            // `s3:/bucket`, `gs:bucket`: a URL mistyped, not a directory named `s3:`.
            if let Some((scheme, _)) = input.split_once(':') {
                if Service::of_url(&format!("{scheme}://")).is_some() {
                    return Err(bad(
                        input,
                        &format!("a URL needs `{scheme}://` (like {scheme}://bucket/prefix); a directory whose name starts with `{scheme}:` is given as ./{input}"),
                    ));
                }
            }
            return Ok(ArchiveLocation::Dir(PathBuf::from(input)));
        };
        let Some(service) = Service::of_url(input) else {
            return Err(bad(
                input,
                "unknown scheme; use s3://, gs://, az:// or file:// (or a plain directory path)",
            ));
        };
        if service == Service::File {
            // file:///abs/path (an empty authority) or file://localhost/abs/path.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad(
                    input,
                    "a file:// URL needs an absolute path, like file:///srv/wal",
                ));
            }
            let trimmed = path.trim_end_matches('/');
            let path = if trimmed.is_empty() { "/" } else { trimmed };
            if path.split('/').any(|c| c == "..") {
                return Err(bad(input, "no `..` in the path"));
            }
            return Ok(ArchiveLocation::Store(StoreUrl {
                service,
                bucket: String::new(),
                prefix: String::new(),
                path: Some(PathBuf::from(path)),
            }));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            // Never echo what may be a key.
            return Err(StoreError::BadLocation {
                input: format!("{scheme}://…"),
                reason: "credentials do not belong in the URL: set them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY)".into(),
            });
        }
        if authority.is_empty() {
            let example = match service {
                Service::Azure => "no container name; like az://container/prefix",
                Service::Gcs => "no bucket name; like gs://bucket/prefix",
                Service::S3 | Service::File => "no bucket name; like s3://bucket/prefix",
            };
            return Err(bad(input, example));
        }
        if !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(bad(
                input,
                "the bucket name may hold letters, digits, `-`, `.` and `_` only",
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(bad(
                input,
                "no query or fragment; settings come from the environment",
            ));
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(bad(input, "no `.` or `..` in the prefix"));
        }
        Ok(ArchiveLocation::Store(StoreUrl {
            service,
            bucket: authority.to_string(),
            prefix: parts.join("/"),
            path: None,
        }))
    }

    /// True for object storage (including `file://`).
    pub fn is_store(&self) -> bool {
        matches!(self, ArchiveLocation::Store(_))
    }
}

impl fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveLocation::Dir(p) => write!(f, "{}", p.display()),
            ArchiveLocation::Store(u) => u.fmt(f),
        }
    }
}

impl std::str::FromStr for ArchiveLocation {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        ArchiveLocation::parse(s)
    }
}

fn bad(input: &str, reason: &str) -> StoreError {
    StoreError::BadLocation {
        input: input.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_service_of_a_url_or_object_name() {
        assert_eq!(Service::of_url("gs://b/p/x"), Some(Service::Gcs));
        assert_eq!(Service::of_url("AZURE://c"), Some(Service::Azure));
        assert_eq!(Service::of_url("s3a://b"), Some(Service::S3));
        assert_eq!(Service::of_url("/srv/wal"), None);
        assert_eq!(Service::of_url("ftp://x"), None);
        assert!(Service::Azure
            .credentials_fix()
            .contains("AZURE_STORAGE_ACCOUNT_NAME"));
    }

    fn store(s: &str) -> StoreUrl {
        match ArchiveLocation::parse(s).unwrap() {
            ArchiveLocation::Store(u) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn urls_and_paths() {
        assert_eq!(
            ArchiveLocation::parse("/srv/wal").unwrap(),
            ArchiveLocation::Dir("/srv/wal".into())
        );
        assert_eq!(
            ArchiveLocation::parse("rel/dir").unwrap(),
            ArchiveLocation::Dir("rel/dir".into())
        );
        let u = store("s3://bucket/a/b/");
        assert_eq!(
            (u.service, u.bucket.as_str(), u.prefix.as_str()),
            (Service::S3, "bucket", "a/b")
        );
        assert_eq!(u.to_string(), "s3://bucket/a/b");
        let u = store("s3://bucket");
        assert_eq!(
            (u.prefix.as_str(), u.to_string().as_str()),
            ("", "s3://bucket")
        );
        assert_eq!(store("gs://b/p").service, Service::Gcs);
        assert_eq!(store("az://c/p").service, Service::Azure);
        assert_eq!(store("azure://c//p//q").prefix, "p/q");
        let f = store("file:///srv/wal/");
        assert_eq!(f.path, Some(PathBuf::from("/srv/wal")));
        assert_eq!(f.to_string(), "file:///srv/wal");
        assert_eq!(store("file://localhost/x").path, Some(PathBuf::from("/x")));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        for bad in [
            "",
            "ftp://x/y",
            "s3://",
            "s3:///prefix",
            "s3://b/../x",
            "s3://b/p?x=1",
            "s3://b a/p",
            "file://relative/path",
            "file:///a/../b",
        ] {
            assert!(ArchiveLocation::parse(bad).is_err(), "{bad}");
        }
        let e = ArchiveLocation::parse("s3://AKIAKEY:SuperSecret@bucket/p").unwrap_err();
        let text = e.to_string();
        assert!(
            !text.contains("SuperSecret") && !text.contains("AKIAKEY"),
            "{text}"
        );
        assert!(text.contains("environment"), "{text}");
        // The example in the refusal is of the scheme given.
        let e = ArchiveLocation::parse("az:///p").unwrap_err().to_string();
        assert!(e.contains("az://container/prefix"), "{e}");
        let e = ArchiveLocation::parse("gs://").unwrap_err().to_string();
        assert!(e.contains("gs://bucket/prefix"), "{e}");
        // A mistyped URL is not a directory.
        for typo in [
            "s3:/bucket/p",
            "s3:bucket",
            "gs:/b",
            "az:c/p",
            "file:/srv/wal",
        ] {
            let e = ArchiveLocation::parse(typo).unwrap_err().to_string();
            assert!(e.contains("a URL needs"), "{typo}: {e}");
        }
        assert!(matches!(
            ArchiveLocation::parse("./s3:x"),
            Ok(ArchiveLocation::Dir(_))
        ));
        assert!(matches!(
            ArchiveLocation::parse("/srv/wal:archive"),
            Ok(ArchiveLocation::Dir(_))
        ));
    }
}

//! [`ObjectStoreArchive`]: [`ArchiveStore`] over the `object_store` crate — Amazon S3 and
//! S3-compatible stores, Google Cloud Storage, Azure Blob Storage.
//!
//! Configuration comes from the environment, as each service's own tools read it (the builders'
//! `from_env`): for S3 `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` (S3-compatible stores), `AWS_WEB_IDENTITY_TOKEN_FILE` +
//! `AWS_ROLE_ARN`, or the instance's metadata service; for GCS `GOOGLE_APPLICATION_CREDENTIALS`
//! or `GOOGLE_SERVICE_ACCOUNT`; for Azure `AZURE_STORAGE_ACCOUNT_NAME` with
//! `AZURE_STORAGE_ACCOUNT_KEY`, a SAS token or a managed identity. An `http://` endpoint is
//! allowed when one is configured explicitly (a store on a private network or on loopback).
//!
//! Put-if-absent is `PutMode::Create`: S3's `If-None-Match: *` (supported by AWS S3 since 2024,
//! MinIO, SeaweedFS, R2), GCS's `ifGenerationMatch=0`, Azure's `If-None-Match: *`.
//!
//! TLS is rustls with the ring provider (no OpenSSL, no aws-lc); it is installed as the process's
//! default provider the first time a store is built.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::error::{Result, StoreError};
use crate::location::{Service, StoreUrl};
use crate::store::{
    ArchiveStore, Fetched, NewObject, ObjectAttrs, ObjectInfo, ObjectReader, PutIfAbsent,
    StoreFuture, StreamChunk,
};

/// Files up to this size are uploaded with one conditional PUT; larger ones as a multipart
/// upload of [`PART_SIZE`] parts.
const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Size of one part of a multipart upload (S3 wants at least 5 MB, at most 10 000 parts: 160 GB).
const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts in flight at once: memory is about `PART_SIZE * (PARTS_IN_FLIGHT + 1)`.
const PARTS_IN_FLIGHT: usize = 4;
/// Parts in flight for [`ArchiveStore::put_stream`] (a backup streaming while it arrives; the
/// producer waits when they are all in flight): about 50 MB of memory at most.
const STREAM_PARTS_IN_FLIGHT: usize = 2;

/// The metadata key of [`ObjectAttrs::wal_sha256`] on S3 and GCS (`x-amz-meta-walrelay-sha256`).
pub const SHA256_METADATA_KEY: &str = "walrelay-sha256";
/// The same key on Azure, whose metadata names must be C# identifiers: a `-` is refused with
/// `400 InvalidMetadata`, and no object could be stored.
pub const AZURE_SHA256_METADATA_KEY: &str = "walrelay_sha256";

/// The metadata key that holds the WAL's SHA-256 on `service`.
pub fn sha256_metadata_key(service: Service) -> &'static str {
    match service {
        Service::Azure => AZURE_SHA256_METADATA_KEY,
        Service::S3 | Service::Gcs | Service::File => SHA256_METADATA_KEY,
    }
}

/// How long one request may take (a 16 MB segment over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries inside one call: short, so that an unreachable store is reported within seconds and
/// the caller (the uploader, restore) decides what happens next.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

/// The environment variables that set a service's endpoint, as its builder's `from_env` reads
/// them (any case of the name after the prefix).
fn endpoint_variables(service: Service) -> &'static [&'static str] {
    match service {
        Service::S3 => &[
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL_STS",
        ],
        Service::Azure => &["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"],
        Service::Gcs => &["GOOGLE_BASE_URL"],
        Service::File => &[],
    }
}

/// The endpoint variables of `service` that are set in `env`, with their values.
fn configured_endpoints(
    service: Service,
    env: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let wanted = endpoint_variables(service);
    env.filter(|(k, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
        .collect()
}

/// What is wrong with an endpoint variable's value, as a message with its fix; `None` when it
/// is an http(s) URL with a host.
fn endpoint_problem(var: &str, value: &str) -> Option<String> {
    let example = "like http://127.0.0.1:8333 or https://s3.example.com";
    if value.trim().is_empty() {
        return Some(format!(
            "{var} is set but empty: unset it to reach the service itself, or set the store's address, {example}"
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Some(format!(
            "{var} {value:?} has a space or line break in it: remove it (an EnvironmentFile keeps trailing spaces)"
        ));
    }
    match url::Url::parse(value) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Some(format!(
            "{var} {value:?} does not start with http:// or https://: write the store's address {example}"
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some(format!(
            "{var} {value:?} names no host: write the store's address {example}"
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "{var} {value:?} is not a URL ({e}): write the store's address {example}"
        )),
    }
}

/// An archive in object storage.
#[derive(Debug)]
pub struct ObjectStoreArchive {
    inner: Arc<dyn ObjectStore>,
    url: StoreUrl,
}

/// Installs rustls's ring provider for the process (reqwest is built without a provider of its
/// own). Idempotent; a provider installed earlier stays.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ObjectStoreArchive {
    /// Builds the client for `url` from the environment. Nothing is contacted yet.
    pub fn open(url: &StoreUrl) -> Result<ObjectStoreArchive> {
        install_tls_provider();
        // What object_store refuses here is the configuration from the environment (no account,
        // a malformed key): the fix is the service's credential variables.
        let setup = |e: object_store::Error| StoreError::Setup {
            location: url.to_string(),
            reason: format!("{e}; {}", url.service.credentials_fix()),
        };
        let mut client = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        // Every service's builder: our client options and retries, then build.
        macro_rules! configured {
            ($builder:expr) => {
                Arc::new(
                    $builder
                        .with_client_options(client)
                        .with_retry(retry_config())
                        .build()
                        .map_err(setup)?,
                )
            };
        }
        // The client takes a malformed endpoint as it is and panics on its first request.
        let endpoints = configured_endpoints(url.service, std::env::vars());
        if let Some(reason) = endpoints
            .iter()
            .find_map(|(var, value)| endpoint_problem(var, value))
        {
            return Err(StoreError::Setup {
                location: url.to_string(),
                reason,
            });
        }
        if endpoints.iter().any(|(_, v)| v.starts_with("http://")) {
            client = client.with_allow_http(true);
        }
        let inner: Arc<dyn ObjectStore> = match url.service {
            Service::S3 => {
                // from_env reads AWS_REGION and AWS_DEFAULT_REGION; the default is us-east-1.
                configured!(
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&url.bucket)
                )
            }
            Service::Gcs => configured!(object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&url.bucket)),
            Service::Azure => configured!(object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&url.bucket)),
            Service::File => {
                return Err(StoreError::Setup {
                    location: url.to_string(),
                    reason: "file:// archives are local directories (LocalDirStore)".into(),
                })
            }
        };
        Ok(ObjectStoreArchive {
            inner,
            url: url.clone(),
        })
    }

    fn path(&self, name: &str) -> ObjPath {
        if self.url.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.url.prefix))
        }
    }

    /// The object's name relative to the root, from its full path.
    fn relative(&self, full: &ObjPath) -> String {
        let s = full.as_ref();
        if self.url.prefix.is_empty() {
            return s.to_string();
        }
        s.strip_prefix(&self.url.prefix)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(s)
            .to_string()
    }

    fn display(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    /// A multipart upload to `name`, or `None` when the name exists already (checked with HEAD:
    /// a multipart upload cannot be conditional in every store).
    async fn start_multipart(&self, name: &str) -> Result<Option<object_store::WriteMultipart>> {
        let path = self.path(name);
        match self.inner.head(&path).await {
            Ok(_) => return Ok(None),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError::remote("check", self.display(name), e)),
        }
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| StoreError::remote("start upload of", self.display(name), e))?;
        Ok(Some(object_store::WriteMultipart::new_with_chunk_size(
            upload, PART_SIZE,
        )))
    }

    /// Completes the upload when every part was written (`fed` is `Ok`); otherwise aborts it, so
    /// that no object appears, and returns the error.
    async fn complete_multipart(
        &self,
        name: &str,
        writer: object_store::WriteMultipart,
        fed: Result<()>,
    ) -> Result<PutIfAbsent> {
        match fed {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| StoreError::remote("complete upload of", self.display(name), e))?;
                Ok(PutIfAbsent::Created)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// Whether the service lists from a given name on (S3's start-after, GCS's startOffset), so that
/// a prefix inside a name costs one request; Azure lists whole directories.
fn lists_from_an_offset(service: Service) -> bool {
    matches!(service, Service::S3 | Service::Gcs)
}

fn attributes(service: Service, attrs: &ObjectAttrs) -> Attributes {
    let mut a = Attributes::new();
    if let Some(sha) = attrs.wal_sha256 {
        a.insert(
            Attribute::Metadata(sha256_metadata_key(service).into()),
            AttributeValue::from(hex::encode(sha)),
        );
    }
    a
}

/// The attributes read back; either spelling of the key is accepted (an archive copied between
/// services keeps the key it was written with).
fn parse_attributes(a: &Attributes) -> ObjectAttrs {
    let sha = [SHA256_METADATA_KEY, AZURE_SHA256_METADATA_KEY]
        .into_iter()
        .find_map(|key| a.get(&Attribute::Metadata(key.into())))
        .and_then(|v| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(v.as_ref(), &mut out)
                .ok()
                .map(|()| out)
        });
    ObjectAttrs { wal_sha256: sha }
}

impl ArchiveStore for ObjectStoreArchive {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectInfo>> {
        async move {
            // object_store lists by path segments: list the deepest whole directory. A prefix
            // inside a name (a segment's `NAME` for its `NAME.zst`) starts the listing just
            // before it (S3's start-after, GCS's startOffset), so that finding one segment's
            // objects costs one request, not a listing of the whole WAL directory.
            let (dir, partial) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let dir_path = if dir.is_empty() {
                (!self.url.prefix.is_empty()).then(|| ObjPath::from(self.url.prefix.as_str()))
            } else {
                Some(self.path(dir))
            };
            let failed = |e| StoreError::remote("list", self.display(prefix), e);
            let ordered = lists_from_an_offset(self.url.service);
            let stem = partial.get(..partial.len().saturating_sub(1)).unwrap_or("");
            let metas: Vec<object_store::ObjectMeta> = if ordered && !stem.is_empty() {
                let offset = self.path(&format!(
                    "{dir}{}{stem}",
                    if dir.is_empty() { "" } else { "/" }
                ));
                let wanted = self.path(prefix);
                let wanted = wanted.as_ref().to_string();
                self.inner
                    .list_with_offset(dir_path.as_ref(), &offset)
                    .try_skip_while(|m| {
                        futures::future::ready(Ok(!m.location.as_ref().starts_with(&wanted)))
                    })
                    .try_take_while(|m| {
                        futures::future::ready(Ok(m.location.as_ref().starts_with(&wanted)))
                    })
                    .try_collect()
                    .await
                    .map_err(failed)?
            } else {
                self.inner
                    .list(dir_path.as_ref())
                    .try_collect()
                    .await
                    .map_err(failed)?
            };
            Ok(metas
                .into_iter()
                .map(|m| ObjectInfo {
                    name: self.relative(&m.location),
                    size: m.size,
                    modified: Some(std::time::SystemTime::from(m.last_modified)),
                })
                .filter(|o| o.name.starts_with(prefix))
                .collect())
        }
        .boxed()
    }

    fn lists_name_prefixes_cheaply(&self) -> bool {
        lists_from_an_offset(self.url.service)
    }

    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        async move {
            let p = prefix.trim_end_matches('/');
            let path = if p.is_empty() {
                (!self.url.prefix.is_empty()).then(|| ObjPath::from(self.url.prefix.as_str()))
            } else {
                Some(self.path(p))
            };
            let listed = self
                .inner
                .list_with_delimiter(path.as_ref())
                .await
                .map_err(|e| StoreError::remote("list", self.display(prefix), e))?;
            Ok(listed
                .common_prefixes
                .iter()
                .filter_map(|c| c.filename().map(str::to_string))
                .collect())
        }
        .boxed()
    }

    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Fetched>> {
        async move {
            let r = match self.inner.get(&self.path(name)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(StoreError::remote("get", self.display(name), e)),
            };
            let attrs = parse_attributes(&r.attributes);
            let bytes = r
                .bytes()
                .await
                .map_err(|e| StoreError::remote("read", self.display(name), e))?;
            Ok(Some(Fetched { bytes, attrs }))
        }
        .boxed()
    }

    fn put_if_absent<'a>(&'a self, name: &'a str, put: NewObject) -> StoreFuture<'a, PutIfAbsent> {
        async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes: attributes(self.url.service, &put.attrs),
                ..Default::default()
            };
            match self
                .inner
                .put_opts(&self.path(name), PutPayload::from_bytes(put.data), opts)
                .await
            {
                Ok(_) => Ok(PutIfAbsent::Created),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(PutIfAbsent::Exists),
                Err(e) => Err(StoreError::remote("upload", self.display(name), e)),
            }
        }
        .boxed()
    }

    /// Small files: one conditional PUT. Large ones: a multipart upload streamed from the file
    /// (bounded memory). A multipart upload cannot be conditional in every store, so the name is
    /// checked first (HEAD); the caller makes the name its own (a backup claims its label with a
    /// conditional PUT before uploading) and the object appears only when the upload completes.
    fn put_file_if_absent<'a>(
        &'a self,
        name: &'a str,
        source: &'a std::path::Path,
    ) -> StoreFuture<'a, PutIfAbsent> {
        async move {
            use tokio::io::AsyncReadExt;
            let io = |action, e| StoreError::io(action, source, e);
            let size = tokio::fs::metadata(source)
                .await
                .map_err(|e| io("stat", e))?
                .len();
            if size <= SINGLE_PUT_MAX {
                let data = tokio::fs::read(source).await.map_err(|e| io("read", e))?;
                let put = NewObject {
                    data: bytes::Bytes::from(data),
                    attrs: ObjectAttrs::default(),
                };
                return self.put_if_absent(name, put).await;
            }
            let Some(mut writer) = self.start_multipart(name).await? else {
                return Ok(PutIfAbsent::Exists);
            };
            let mut file = tokio::fs::File::open(source)
                .await
                .map_err(|e| io("open", e))?;
            let mut buf = vec![0u8; 1024 * 1024];
            let result: Result<()> = async {
                loop {
                    let n = file.read(&mut buf).await.map_err(|e| io("read", e))?;
                    if n == 0 {
                        return Ok(());
                    }
                    writer
                        .wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| StoreError::remote("upload", self.display(name), e))?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            self.complete_multipart(name, writer, result).await
        }
        .boxed()
    }

    /// A multipart upload fed as the chunks arrive; the name is checked first (see
    /// [`put_file_if_absent`](Self::put_file_if_absent)); an abandoned stream aborts the upload.
    fn put_stream<'a>(
        &'a self,
        name: &'a str,
        mut chunks: tokio::sync::mpsc::Receiver<StreamChunk>,
    ) -> StoreFuture<'a, PutIfAbsent> {
        async move {
            let Some(mut writer) = self.start_multipart(name).await? else {
                return Ok(PutIfAbsent::Exists);
            };
            let result: Result<()> = async {
                loop {
                    match chunks.recv().await {
                        Some(StreamChunk::Data(b)) => {
                            writer
                                .wait_for_capacity(STREAM_PARTS_IN_FLIGHT)
                                .await
                                .map_err(|e| StoreError::remote("upload", self.display(name), e))?;
                            writer.put(b);
                        }
                        Some(StreamChunk::End) => return Ok(()),
                        None => return Err(StreamChunk::abandoned(&self.display(name))),
                    }
                }
            }
            .await;
            self.complete_multipart(name, writer, result).await
        }
        .boxed()
    }

    fn reader<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ObjectReader>> {
        async move {
            let r = match self.inner.get(&self.path(name)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(StoreError::remote("get", self.display(name), e)),
            };
            let shown = self.display(name);
            let stream = r
                .into_stream()
                .map_err(move |e| std::io::Error::other(format!("read {shown}: {e}")));
            Ok(Some(
                Box::new(tokio_util::io::StreamReader::new(stream)) as ObjectReader
            ))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        async move {
            match self.inner.delete(&self.path(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StoreError::remote("delete", self.display(name), e)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_endpoints_are_named_before_the_client_panics_on_them() {
        let bad = |v: &str| endpoint_problem("AWS_ENDPOINT_URL", v).unwrap_or_default();
        assert!(bad("127.0.0.1:8333").contains("is not a URL"));
        assert!(bad("localhost:9000").contains("does not start with http:// or https://"));
        assert!(bad("htp://127.0.0.1:8333").contains("does not start with http://"));
        assert!(bad("http://127.0.0.1:8333 ").contains("has a space"));
        assert!(bad("http://127.0.0.1:99999").contains("is not a URL"));
        assert!(bad("").contains("is set but empty"));
        assert!(bad("http://").contains("is not a URL") || bad("http://").contains("no host"));
        for good in [
            "http://127.0.0.1:8333",
            "https://s3.eu-west-1.amazonaws.com",
            "http://[::1]:9000/",
            "https://minio.example.com/sub",
        ] {
            assert_eq!(endpoint_problem("AWS_ENDPOINT_URL", good), None, "{good}");
        }
        let env = [
            ("aws_endpoint".to_string(), "x".to_string()),
            ("AWS_REGION".to_string(), "y".to_string()),
            ("AZURE_STORAGE_ENDPOINT".to_string(), "z".to_string()),
        ];
        assert_eq!(
            configured_endpoints(Service::S3, env.clone().into_iter()),
            [("aws_endpoint".to_string(), "x".to_string())]
        );
        assert_eq!(
            configured_endpoints(Service::Azure, env.into_iter()),
            [("AZURE_STORAGE_ENDPOINT".to_string(), "z".to_string())]
        );
    }

    /// Azure takes metadata names that are C# identifiers: letters, digits and `_`, not starting
    /// with a digit.
    fn is_csharp_identifier(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn stored_key(service: Service) -> String {
        let attrs = attributes(
            service,
            &ObjectAttrs {
                wal_sha256: Some([7; 32]),
            },
        );
        let keys: Vec<String> = attrs
            .iter()
            .map(|(k, _)| match k {
                Attribute::Metadata(m) => m.to_string(),
                other => panic!("unexpected attribute {other:?}"),
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn the_checksum_key_is_one_azure_accepts() {
        assert!(is_csharp_identifier(&stored_key(Service::Azure)));
        assert!(!is_csharp_identifier(SHA256_METADATA_KEY));
        // S3 and GCS keep the key existing archives were written with.
        assert_eq!(stored_key(Service::S3), SHA256_METADATA_KEY);
        assert_eq!(stored_key(Service::Gcs), SHA256_METADATA_KEY);
    }

    #[test]
    fn either_spelling_of_the_checksum_key_is_read() {
        for key in [SHA256_METADATA_KEY, AZURE_SHA256_METADATA_KEY] {
            let mut a = Attributes::new();
            a.insert(
                Attribute::Metadata(key.into()),
                AttributeValue::from(hex::encode([9u8; 32])),
            );
            assert_eq!(parse_attributes(&a).wal_sha256, Some([9; 32]), "{key}");
        }
        assert_eq!(parse_attributes(&Attributes::new()).wal_sha256, None);
    }
}

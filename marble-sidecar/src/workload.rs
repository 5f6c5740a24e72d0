//! The SPIFFE Workload API (`--workload-api unix:/PATH`, docs/spiffe.md): a gRPC server on a
//! Unix socket that hands local workloads this marble's X.509-SVID (its mesh certificate
//! chain), the SVID's private key and the deployment's trust bundle, and streams the SVID again
//! each time renewal swaps a new certificate into the [`CertStore`], so a workload holding the
//! stream never sees the old one expire.
//!
//! Local workloads only, three ways: the socket is created mode 0600 (bound inside a private
//! 0700 directory and renamed into place, so it is never reachable with a wider mode); its
//! directory must belong to the sidecar's user and be writable by nobody else (or another
//! user could replace the socket with their own); and a connection whose peer credentials
//! are neither the sidecar's user nor root is closed before a byte is read. Every call must
//! carry the metadata `workload.spiffe.io: true` (the specification's guard against requests
//! relayed by browsers or proxies); without it the answer is INVALID_ARGUMENT. The JWT methods
//! answer UNIMPLEMENTED.
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::proxy::CertStore;

/// The generated Workload API messages and server (from `proto/workload.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    // The proto has no package (a wire fact: the method paths are `/SpiffeWorkloadAPI/...`),
    // which prost names `_`.
    tonic::include_proto!("_");

    impl std::fmt::Debug for X509svid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("X509svid")
                .field("spiffe_id", &self.spiffe_id)
                .field("x509_svid_len", &self.x509_svid.len())
                .field("bundle_len", &self.bundle.len())
                .field("hint", &self.hint)
                .finish_non_exhaustive()
        }
    }
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The metadata key every Workload API request must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long to wait before accepting again after `accept` failed (e.g. out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Why the Workload API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// The socket cannot be created where it was asked for.
    #[error("Workload API socket {path}: {reason}")]
    Socket {
        /// The configured socket path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The activation's certificates cannot be served.
    #[error("Workload API: {0}")]
    Identity(String),
}

/// The socket path of a `unix:/PATH` or `unix:///PATH` address (SPIFFE_ENDPOINT_SOCKET syntax).
pub fn socket_path(address: &str) -> Result<PathBuf, String> {
    let rest = address.strip_prefix("unix:").ok_or_else(|| {
        format!("{address:?}: only unix:/PATH (or unix:///PATH) is served; the Workload API is for local workloads")
    })?;
    let path = match rest.strip_prefix("//") {
        // `unix://host/...` would name a host, which a Unix socket has none of.
        Some(after) if after.starts_with('/') => after,
        Some(_) => {
            return Err(format!(
                "{address:?}: a unix: address has no host part; write unix:///PATH"
            ))
        }
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(format!("{address:?}: the socket path must be absolute"));
    }
    if path.contains(['?', '#', '\0']) {
        return Err(format!(
            "{address:?}: the socket path must not hold '?', '#' or NUL"
        ));
    }
    let path = PathBuf::from(path);
    if path.file_name().is_none() || path.ends_with("..") {
        return Err(format!("{address:?} names no socket file"));
    }
    Ok(path)
}

/// What the Workload API serves: the marble's identity, shared with the proxies and renewal.
#[derive(Clone)]
pub struct Identity {
    spiffe_id: String,
    trust_domain: String,
    certs: Arc<CertStore>,
    key_pkcs8: Arc<Zeroizing<Vec<u8>>>,
    bundle: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The SVID `spiffe_id` whose chain (renewed in place) is in `certs`, its key (PKCS#8 DER)
    /// and the trust bundle: the deployment root CA (PEM) that every marble chain leads to.
    pub fn new(
        spiffe_id: &str,
        certs: Arc<CertStore>,
        key_pkcs8: Zeroizing<Vec<u8>>,
        root_ca_pem: &str,
    ) -> Result<Identity, WorkloadApiError> {
        let trust_domain = trust_domain_of(spiffe_id).map_err(WorkloadApiError::Identity)?;
        let roots = rustls_pemfile::certs(&mut root_ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WorkloadApiError::Identity(format!("root CA is not PEM: {e}")))?;
        if roots.is_empty() {
            return Err(WorkloadApiError::Identity(
                "the activation carries no root CA certificate".into(),
            ));
        }
        Ok(Identity {
            spiffe_id: spiffe_id.to_string(),
            trust_domain: trust_domain.to_string(),
            certs,
            key_pkcs8: Arc::new(key_pkcs8),
            bundle: Arc::new(concat_der(roots.iter().map(AsRef::as_ref))),
        })
    }

    /// The trust domain the SVID belongs to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The X509SVIDResponse for the chain `current`.
    fn svid_response(&self, current: &CertifiedKey) -> pb::X509svidResponse {
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.spiffe_id.clone(),
                x509_svid: concat_der(current.cert.iter().map(AsRef::as_ref)),
                // A copy in a plain Vec: prost and the HTTP/2 buffers cannot zeroize, and the
                // workload receives the key in clear over the socket anyway.
                x509_svid_key: self.key_pkcs8.to_vec(),
                bundle: self.bundle.to_vec(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: Default::default(),
        }
    }

    fn bundles_response(&self) -> pb::X509BundlesResponse {
        pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(self.trust_domain.clone(), self.bundle.to_vec())].into(),
        }
    }
}

/// The trust domain of `spiffe://<trust domain>/<path>`.
pub fn trust_domain_of(spiffe_id: &str) -> Result<&str, String> {
    let rest = spiffe_id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{spiffe_id:?} is not a SPIFFE ID"))?;
    let domain = rest.split('/').next().unwrap_or_default();
    if domain.is_empty() {
        return Err(format!("{spiffe_id:?} has no trust domain"));
    }
    Ok(domain)
}

/// Certificates as the Workload API carries them: DER, one after the other.
fn concat_der<'a>(certs: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    certs.flat_map(|c| c.iter().copied()).collect()
}

/// Refuses a request without `workload.spiffe.io: true`.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.to_str().is_ok_and(|v| v.eq_ignore_ascii_case("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true",
        )),
    }
}

/// The gRPC service over an [`Identity`].
struct Service {
    identity: Identity,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = ReceiverStream<Result<pb::X509svidResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let mut updates = self.identity.certs.subscribe();
        let identity = self.identity.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let current = updates.borrow_and_update().clone();
                if tx.send(Ok(identity.svid_response(&current))).await.is_err() {
                    return;
                }
                tracing::debug!("Workload API: X.509-SVID sent");
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    // The workload hung up: do not keep a task until the next renewal.
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type FetchX509BundlesStream = ReceiverStream<Result<pb::X509BundlesResponse, Status>>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let (tx, rx) = mpsc::channel(1);
        let first = self.identity.bundles_response();
        tokio::spawn(async move {
            // The root CA lives as long as the deployment: one message, then the stream stays
            // open (clients take a closed stream as a failure and reconnect).
            if tx.send(Ok(first)).await.is_ok() {
                tx.closed().await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }

    type FetchJWTBundlesStream = ReceiverStream<Result<pb::JwtBundlesResponse, Status>>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }
}

fn jwt_unimplemented() -> Status {
    Status::unimplemented("the Quarry sidecar serves X.509-SVIDs only, no JWT-SVIDs")
}

/// The Workload API bound to its socket, ready to serve.
#[derive(Debug)]
pub struct WorkloadApi {
    listener: UnixListener,
    socket: SocketFile,
    identity: Identity,
}

impl WorkloadApi {
    /// Creates the socket at `path` (mode 0600; its directory, created 0700 when missing, must
    /// be the sidecar user's and writable by nobody else; a stale socket there is replaced, a
    /// live one or any other file refused).
    pub fn bind(path: &Path, identity: Identity) -> Result<WorkloadApi, WorkloadApiError> {
        let fail = |reason: String| WorkloadApiError::Socket {
            path: path.to_path_buf(),
            reason,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => return Err(fail("names no directory".into())),
        };
        // A missing directory (only the last component) is created private: in Kubernetes
        // the socket has to live in an emptyDir, whose own directory is mode 0777 and root's,
        // which the checks below rightly refuse; a 0700 directory of ours inside it passes.
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "created the Workload API socket directory (0700)")
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(fail(format!(
                    "creating its directory {} (its parent must exist): {e}",
                    dir.display()
                )))
            }
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| fail(format!("its directory {}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(fail(format!("{} is not a directory", dir.display())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(fail(format!(
                "its directory {} is writable by group or others (mode {:o}): another user could replace the socket; use a directory only the sidecar's user can write",
                dir.display(),
                meta.mode() & 0o7777
            )));
        }
        // A private directory beside the socket: the socket is bound there and made 0600
        // before it is renamed to `path`, so it is never reachable with the umask's mode.
        let private = dir.join(format!(
            ".quarry-wl-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(|e| fail(format!("creating a directory in {}: {e}", dir.display())))?;
        let result = Self::bind_in(path, dir, &meta, &private, identity);
        // Empty by now when the socket was moved; a failed attempt leaves at most the socket.
        let _ = std::fs::remove_file(private.join("s"));
        let _ = std::fs::remove_dir(&private);
        result.map_err(fail)
    }

    fn bind_in(
        path: &Path,
        dir: &Path,
        dir_meta: &std::fs::Metadata,
        private: &Path,
        identity: Identity,
    ) -> Result<WorkloadApi, String> {
        // What we just created belongs to the user the sidecar acts as (no libc call needed).
        let own_uid = std::fs::metadata(private)
            .map_err(|e| format!("{}: {e}", private.display()))?
            .uid();
        if dir_meta.uid() != own_uid {
            return Err(format!(
                "its directory {} belongs to uid {}, the sidecar runs as uid {own_uid}: use a directory of the sidecar's user",
                dir.display(),
                dir_meta.uid()
            ));
        }
        let temporary = private.join("s");
        let listener = UnixListener::bind(&temporary).map_err(|e| {
            format!(
                "binding {}: {e} (Unix socket paths are limited to 107 bytes)",
                temporary.display()
            )
        })?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod 0600: {e}"))?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                // A socket someone still answers on is another server's (a second sidecar
                // given the same path): taking it over would cut its workloads off.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(
                        "another server is listening on this socket; refusing to replace it"
                            .to_string(),
                    );
                }
                tracing::info!(path = %path.display(), "replacing a stale Workload API socket");
            }
            Ok(_) => return Err("exists and is not a socket; refusing to replace it".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        std::fs::rename(&temporary, path)
            .map_err(|e| format!("moving the socket into place: {e}"))?;
        let inode = std::fs::symlink_metadata(path)
            .map_err(|e| e.to_string())?
            .ino();
        Ok(WorkloadApi {
            listener,
            socket: SocketFile {
                path: path.to_path_buf(),
                inode,
                own_uid,
            },
            identity,
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves until the returned future is dropped, which also removes the socket.
    pub async fn serve(self) {
        let WorkloadApi {
            listener,
            socket,
            identity,
        } = self;
        tracing::info!(
            socket = %socket.path.display(),
            spiffe_id = %identity.spiffe_id,
            "SPIFFE Workload API listening"
        );
        let (tx, rx) = mpsc::channel(16);
        let server = tonic::transport::Server::builder().serve_with_incoming(
            SpiffeWorkloadApiServer::new(Service { identity }),
            ReceiverStream::new(rx),
        );
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "the Workload API server stopped");
                }
            }
            () = accept_local(&listener, socket.own_uid, tx) => {}
        }
        drop(socket);
    }
}

/// Accepts connections whose peer is the sidecar's user (or root) and hands them to `tx`.
async fn accept_local(
    listener: &UnixListener,
    own_uid: u32,
    tx: mpsc::Sender<std::io::Result<UnixStream>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match stream.peer_cred() {
                Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Ok(cred) => tracing::warn!(
                    uid = cred.uid(),
                    pid = ?cred.pid(),
                    "Workload API: connection from another user closed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API: peer credentials unavailable; connection closed")
                }
            },
            Err(error) => {
                tracing::warn!(%error, "Workload API: accept failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// The socket file this sidecar created; removed when dropped if it is still that file.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    inode: u64,
    own_uid: u32,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_unix_and_absolute() {
        assert_eq!(
            socket_path("unix:/run/quarry/agent.sock").unwrap(),
            PathBuf::from("/run/quarry/agent.sock")
        );
        assert_eq!(
            socket_path("unix:///run/quarry/agent.sock").unwrap(),
            PathBuf::from("/run/quarry/agent.sock")
        );
        for bad in [
            "/run/agent.sock",
            "tcp://127.0.0.1:8081",
            "unix:agent.sock",
            "unix://host/agent.sock",
            "unix:/",
            "unix:/run/agent.sock?x=1",
        ] {
            assert!(socket_path(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn trust_domain_is_the_authority_of_the_spiffe_id() {
        assert_eq!(
            trust_domain_of("spiffe://quarry.local/marble/web/1").unwrap(),
            "quarry.local"
        );
        assert!(trust_domain_of("https://quarry.local/x").is_err());
        assert!(trust_domain_of("spiffe:///x").is_err());
    }

    #[test]
    fn requests_need_the_security_header() {
        let mut request = Request::new(());
        assert_eq!(
            check_header(&request).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "false".parse().unwrap());
        assert!(check_header(&request).is_err());
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(check_header(&request).is_ok());
    }
}

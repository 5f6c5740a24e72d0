//! etcd's v3 gRPC API over tonic: the messages and clients compiled from
//! `proto/etcd_v3.proto` by build.rs, one channel balanced over the configured endpoints
//! (TLS, timeouts, HTTP/2 keep-alive, the leader requirement), and the few calls the store
//! makes.
//!
//! Quarry talks to etcd itself instead of through an etcd client crate: the only Rust client
//! on crates.io compiles etcd's protos with `protoc` at build time, which a fresh machine with
//! only the Rust toolchain does not have (issue 16).
use std::time::Duration;

use futures_util::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

/// The generated etcd messages and clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::request_op::Request as Op;
use pb::watch_client::WatchClient;

/// How the channel to etcd is set up.
pub struct ChannelOptions {
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Time limit of establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval and the time to wait for its answer.
    pub keep_alive: (Duration, Duration),
    /// Largest message accepted from etcd.
    pub max_message: usize,
}

/// TLS material for etcd (PEM).
pub struct TlsMaterial {
    /// CA bundle that signs the etcd server certificates.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key for etcd's client-certificate authentication.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Adds `hasleader: true` to every request: etcd then refuses requests on a member that has
/// lost its leader instead of serving them (a partitioned member must not answer).
#[derive(Clone, Copy)]
pub struct RequireLeader;

impl tonic::service::Interceptor for RequireLeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("hasleader", MetadataValue::from_static("true"));
        Ok(request)
    }
}

type Service = InterceptedService<Channel, RequireLeader>;

/// A cheap-to-clone handle on etcd: one channel balanced over every endpoint.
#[derive(Clone)]
pub struct Client {
    service: Service,
    max_message: usize,
}

impl Client {
    /// A lazy channel to `endpoints` (nothing is sent until the first request).
    pub fn new(
        endpoints: &[String],
        options: &ChannelOptions,
        tls: Option<TlsMaterial>,
    ) -> Result<Client, String> {
        let tls = tls.map(|t| {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = t.ca {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = t.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            config
        });
        let mut list = Vec::new();
        for url in endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("etcd endpoint {url:?}: {e}"))?
                .timeout(options.request_timeout)
                .connect_timeout(options.connect_timeout)
                .http2_keep_alive_interval(options.keep_alive.0)
                .keep_alive_timeout(options.keep_alive.1)
                .keep_alive_while_idle(true);
            if let Some(config) = &tls {
                endpoint = endpoint
                    .tls_config(config.clone())
                    .map_err(|e| format!("etcd endpoint {url:?}: TLS: {e}"))?;
            }
            list.push(endpoint);
        }
        let channel = Channel::balance_list(list.into_iter());
        Ok(Client {
            service: InterceptedService::new(channel, RequireLeader),
            max_message: options.max_message,
        })
    }

    fn kv(&self) -> KvClient<Service> {
        KvClient::new(self.service.clone()).max_decoding_message_size(self.max_message)
    }

    /// One `Range` request.
    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        Ok(self.kv().range(request).await?.into_inner())
    }

    /// The value of one key (none when absent).
    pub async fn get(&self, key: Vec<u8>) -> Result<pb::RangeResponse, Status> {
        self.range(pb::RangeRequest {
            key,
            ..Default::default()
        })
        .await
    }

    /// One `Put` of `key` (under `lease` when not 0).
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>, lease: i64) -> Result<(), Status> {
        self.kv()
            .put(pb::PutRequest { key, value, lease })
            .await
            .map(|_| ())
    }

    /// One transaction.
    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        Ok(self.kv().txn(request).await?.into_inner())
    }

    /// Grants a lease of `ttl` seconds; its ID.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, Status> {
        let granted = LeaseClient::new(self.service.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(Status::unavailable(format!(
                "lease grant: {}",
                granted.error
            )));
        }
        Ok(granted.id)
    }

    /// Opens a keep-alive stream for lease `id`: every message sent on the returned sender
    /// asks for one renewal, answered on the returned stream.
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
            Streaming<pb::LeaseKeepAliveResponse>,
        ),
        Status,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::cancelled("keep-alive sender closed"))?;
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let responses = LeaseClient::new(self.service.clone())
            .lease_keep_alive(requests)
            .await?
            .into_inner();
        Ok((tx, responses))
    }

    /// Watches every key in `[key, range_end)` from `start_revision` on. The request stream
    /// stays open as long as the response stream is read (etcd ends a watch whose client
    /// closed its side).
    pub async fn watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<Streaming<pb::WatchResponse>, Status> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision,
                },
            )),
        };
        let requests = futures_util::stream::once(async move { create })
            .chain(futures_util::stream::pending());
        Ok(WatchClient::new(self.service.clone())
            .max_decoding_message_size(self.max_message)
            .watch(requests)
            .await?
            .into_inner())
    }
}

/// Compare: the key's version (0 = absent) equals `version`.
pub fn version_equals(key: Vec<u8>, version: i64) -> pb::Compare {
    equal(key, CompareTarget::Version, TargetUnion::Version(version))
}

/// Compare: the key's `mod_revision` equals `revision`.
pub fn mod_revision_equals(key: Vec<u8>, revision: i64) -> pb::Compare {
    equal(key, CompareTarget::Mod, TargetUnion::ModRevision(revision))
}

fn equal(key: Vec<u8>, target: CompareTarget, value: TargetUnion) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key,
        target_union: Some(value),
    }
}

/// Operation: put `value` at `key`.
pub fn put_op(key: Vec<u8>, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key,
            value,
            lease: 0,
        })),
    }
}

/// Operation: delete `key`.
pub fn delete_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key,
            range_end: Vec::new(),
        })),
    }
}

/// Operation: read `key`.
pub fn get_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// The revision in a response header (0 when etcd sent none).
pub fn header_revision(header: Option<&pb::ResponseHeader>) -> i64 {
    header.map(|h| h.revision).unwrap_or(0)
}

/// A short description of an etcd error: its gRPC code and message.
pub fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// True when a failed request may nevertheless have been applied by etcd (or another member
/// may answer a read): the connection broke or the deadline passed after sending.
pub fn might_have_applied(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The wire encoding of the messages the store builds matches etcd's field numbers
    /// (checked against bytes written out by hand from the protobuf encoding rules).
    #[test]
    fn compare_and_put_encode_with_etcds_field_numbers() {
        // Compare{result=EQUAL(0, omitted), target=MOD(2), key="k", mod_revision=7}
        let c = mod_revision_equals(b"k".to_vec(), 7);
        assert_eq!(
            c.encode_to_vec(),
            [0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x07]
        );
        // Compare{target=VERSION(0), key="k", version=0}: the oneof is written even at 0.
        let v = version_equals(b"k".to_vec(), 0);
        assert_eq!(v.encode_to_vec(), [0x1a, 0x01, b'k', 0x20, 0x00]);
        // RequestOp{request_put: PutRequest{key="a", value="b"}}
        let p = put_op(b"a".to_vec(), b"b".to_vec());
        assert_eq!(
            p.encode_to_vec(),
            [0x12, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b']
        );
        // RequestOp{request_delete_range: DeleteRangeRequest{key="a"}}
        assert_eq!(
            delete_op(b"a".to_vec()).encode_to_vec(),
            [0x1a, 0x03, 0x0a, 0x01, b'a']
        );
        // LeaseGrantRequest{TTL=10}
        let l = pb::LeaseGrantRequest { ttl: 10, id: 0 };
        assert_eq!(l.encode_to_vec(), [0x08, 0x0a]);
    }

    #[test]
    fn range_response_decodes_fields_etcd_sends_that_quarry_ignores() {
        // RangeResponse{kvs: [KeyValue{key="a", mod_revision=3, value="v", lease=9}],
        // count=1} with an unknown field 99 (varint) appended: decoding skips it.
        let kv = [0x0a, 0x01, b'a', 0x18, 0x03, 0x2a, 0x01, b'v', 0x30, 0x09];
        let mut bytes = vec![0x12, kv.len() as u8];
        bytes.extend_from_slice(&kv);
        bytes.extend_from_slice(&[0x20, 0x01, 0x98, 0x06, 0x01]);
        let r = pb::RangeResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.count, 1);
        assert_eq!(r.kvs[0].key, b"a");
        assert_eq!(r.kvs[0].mod_revision, 3);
        assert_eq!(r.kvs[0].value, b"v");
    }

    #[test]
    fn outcome_unknown_codes() {
        assert!(might_have_applied(&Status::unavailable("x")));
        assert!(might_have_applied(&Status::deadline_exceeded("x")));
        assert!(!might_have_applied(&Status::invalid_argument("x")));
        assert!(!might_have_applied(&Status::failed_precondition("x")));
    }
}

//! The HTTP backend every target forwards to: an in-process hyper HTTP/1.1 server on its own
//! tokio runtime, answering every request with a fixed 19-byte `text/plain` body.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;

/// The response body.
pub const BODY: &[u8] = b"hello from backend\n";

/// A running backend; stops when dropped.
pub struct Backend {
    runtime: Option<tokio::runtime::Runtime>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Backend {
    /// Starts the backend on a free loopback port with `threads` runtime workers.
    pub fn start(threads: usize) -> anyhow::Result<Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("backend")
            .enable_all()
            .build()
            .context("starting the backend runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the backend")?;
        let addr = listener.local_addr()?;
        runtime.spawn(serve(listener));
        Ok(Backend {
            runtime: Some(runtime),
            addr,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or similar: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let service = hyper::service::service_fn(|_request| async {
                let mut response = hyper::Response::new(Full::new(Bytes::from_static(BODY)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

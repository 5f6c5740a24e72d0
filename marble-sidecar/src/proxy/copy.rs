//! Byte relay between the two legs of a proxied connection: both directions at once, each
//! half closed on its own (EOF on one side shuts down writing on the other), with bounded
//! buffers so a slow reader slows the writer down (backpressure).
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Relays until both directions reached EOF or one failed; logs the outcome (sizes and
/// error kinds only, never data).
pub async fn relay<A, B>(proxy: &'static str, peer: SocketAddr, who: &str, a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional(a, b).await {
        Ok((up, down)) => {
            tracing::debug!(proxy, %peer, who, bytes_in = up, bytes_out = down, "connection closed")
        }
        Err(e) => tracing::info!(proxy, %peer, who, error = %e, "connection ended with an error"),
    }
}

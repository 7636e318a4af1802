//! What the rest of the CRI sees of the streaming server: the [`Front`] the RPCs hand
//! their requests to (a URL back), and the server's error.

use std::net::SocketAddr;

use crate::cri::stream_tokens::{self, Pending, TokenStore};
use crate::errdefs::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("stream_server_address {address:?} / stream_server_port {port:?}: {reason}")]
    Address {
        address: String,
        port: String,
        reason: String,
    },
    #[error("bind the streaming server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("streaming TLS: {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("{0} streaming requests are waiting for their client; retry later")]
    TooManyPending(usize),
    #[error("the streaming server is not running on this daemon")]
    NotRunning,
}

impl ErrorKind for StreamingError {
    fn kind(&self) -> Kind {
        match self {
            StreamingError::Address { .. } => Kind::InvalidArgument,
            StreamingError::Bind { .. } | StreamingError::Tls { .. } => Kind::Internal,
            StreamingError::TooManyPending(_) => Kind::ResourceExhausted,
            StreamingError::NotRunning => Kind::Unavailable,
        }
    }
}

/// What the RPCs need: the token cache and the server's base URL.
pub struct Front {
    pub tokens: TokenStore,
    pub base_url: String,
}

impl Front {
    /// Caches `req` and returns the URL a client connects to.
    pub fn url(&self, req: Pending) -> Result<String, StreamingError> {
        let kind = req.kind();
        let token = self
            .tokens
            .insert(req)
            .ok_or(StreamingError::TooManyPending(stream_tokens::MAX_PENDING))?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

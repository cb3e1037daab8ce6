//! The transport's error types: [`TransportError`] for everything that goes wrong on the wire or
//! around it, and [`HandlerError`], the answer of a server-side [`RpcHandler`] that travels back
//! to the caller inside a response frame.
//!
//! [`RpcHandler`]: super::RpcHandler

use std::io;

use openraft::error::{Infallible, RaftError};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, ShardId};

/// An infrastructure failure of the node-to-node transport.
///
/// On the client side these never reach openraft as they are: each RPC maps them to the
/// `RPCError` variant that tells openraft how to react (`Unreachable` backs off, `Network` does
/// not). On the server side they end one connection, never the server.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listening socket failed in a way that retrying cannot fix.
    #[error("cannot accept Raft connections on {address}: {source}")]
    Accept { address: String, source: io::Error },

    /// The TCP connect to a peer failed (refused, no route, ...).
    #[error("cannot connect to the Raft peer at {address}: {source}")]
    Connect { address: String, source: io::Error },

    /// The TCP connect to a peer did not complete in time.
    #[error("connecting to the Raft peer at {address} timed out after {timeout_ms} ms")]
    ConnectTimeout { address: String, timeout_ms: u64 },

    /// A recent connection attempt failed and the link is waiting before it tries again; requests
    /// fail at once instead of each trying to connect.
    #[error(
        "the Raft peer at {address} is down; next connection attempt in {retry_in_ms} ms \
         (last error: {last_error})"
    )]
    PeerDown {
        address: String,
        retry_in_ms: u64,
        last_error: String,
    },

    /// The connection broke while the request was written or waited for its answer.
    #[error("the connection to the Raft peer at {address} was lost: {reason}")]
    ConnectionLost { address: String, reason: String },

    /// The link task of this peer is gone: the transport is being dropped.
    #[error("the link to the Raft peer at {address} is closed")]
    LinkClosed { address: String },

    /// Fault injection ([`LinkFaults`](super::LinkFaults)) cuts this node off.
    #[error("the Raft peer {target} is blocked by fault injection")]
    Blocked { target: NodeId },

    /// The peer answered but hosts no Raft group for this shard (not created yet, or removed).
    #[error("the Raft peer {target} does not host shard {shard}")]
    UnknownShard { target: NodeId, shard: ShardId },

    /// A frame is larger than the configured limit; the connection that carried it is closed.
    #[error("a frame of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    FrameTooLarge { length_bytes: u64, limit_bytes: u64 },

    /// The peer closed the connection in the middle of a frame.
    #[error("the connection closed in the middle of a frame ({buffered_bytes} bytes buffered)")]
    TruncatedFrame { buffered_bytes: usize },

    /// The peer does not speak this protocol (or this version of it).
    #[error(
        "the peer did not open with the ledger Raft protocol preamble (received {received:?})"
    )]
    BadPreamble { received: Vec<u8> },

    #[error("cannot encode a frame: {source}")]
    Encode { source: bincode::error::EncodeError },

    #[error("cannot decode a frame: {source}")]
    Decode { source: bincode::error::DecodeError },

    /// A frame decoded into a message but had bytes left over: the two sides disagree on the
    /// format, so nothing else on this connection can be trusted.
    #[error("a frame of {payload_bytes} bytes has {trailing_bytes} bytes after its message")]
    TrailingBytes {
        payload_bytes: usize,
        trailing_bytes: usize,
    },

    #[error("I/O error on a Raft connection: {source}")]
    Io { source: io::Error },

    /// The peer answered with a response of another kind than the request.
    #[error("the Raft peer answered a {expected} request with a {received} response")]
    UnexpectedResponse {
        expected: RPCTypes,
        received: &'static str,
    },

    /// The peer handled the request but could not send its answer (it did not encode).
    #[error("the Raft peer failed to answer: {message}")]
    RemoteFailure { message: String },
}

impl TransportError {
    /// Whether the peer should be treated as unreachable for a while (openraft backs off), rather
    /// than as a one-off failure of this request.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::ConnectTimeout { .. }
                | TransportError::PeerDown { .. }
                | TransportError::ConnectionLost { .. }
                | TransportError::LinkClosed { .. }
                | TransportError::Blocked { .. }
                | TransportError::UnknownShard { .. }
        )
    }
}

/// Why a server-side [`RpcHandler`](super::RpcHandler) did not produce a Raft response.
///
/// `E` is the API error of the RPC (`Infallible` for append-entries and vote,
/// `InstallSnapshotError` for install-snapshot), as in openraft's `RaftError<NodeId, E>`.
// `RaftError` is large (openraft allows the same lint on it); boxing it would cost an allocation
// per error for a value that is moved once or twice per RPC.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(bound(serialize = "E: Serialize", deserialize = "E: DeserializeOwned"))]
pub enum HandlerError<E: std::error::Error = Infallible> {
    /// The shard's Raft group answered with an error; the caller sees it as openraft's
    /// `RPCError::RemoteError`.
    #[error(transparent)]
    Raft(#[from] RaftError<NodeId, E>),

    /// This node hosts no Raft group for the shard; the caller sees the peer as unreachable for
    /// that shard, which makes openraft back off and retry (the group may be starting).
    #[error("shard {shard} is not hosted on this node")]
    UnknownShard { shard: ShardId },
}

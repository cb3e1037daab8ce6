//! Node-to-node transport for multi-Raft: every shard's openraft group on a node shares one
//! multiplexed TCP connection per peer.
//!
//! openraft 0.9 knows one group per network; here the network factory of each group carries its
//! shard id ([`RaftTransport::network_factory`]) and each node runs one server ([`serve`]) whose
//! [`RpcHandler`] (the node's [`ShardRegistry`]) dispatches to the right group.
//!
//! ## Wire protocol
//!
//! Each node dials each peer once (per direction) and sends all shards' requests over that
//! connection. The client opens with a 16-byte [`handshake`]: an 8-byte preamble
//! ([`PROTOCOL_PREAMBLE`]: protocol name and version) and its own node id (u64, big endian); then
//! both sides exchange frames: a `u32` big-endian payload length, then the
//! payload, encoded with `bincode::serde` and `bincode::config::standard()`. A request frame
//! carries a request id (chosen by the client), the shard id and one of append-entries, vote,
//! install-snapshot (openraft's default chunked snapshot transfer) or pre-vote (ours, for the
//! [`election_gate`](crate::election_gate)); a response frame carries the
//! request id back, so answers come back in whatever order the shards produce them. Frames are
//! limited to [`MAX_FRAME_BYTES`].
//!
//! ## Failure model
//!
//! - Connections are made lazily, on the first request to a peer. While a peer cannot be reached,
//!   requests fail at once with openraft's `Unreachable` (so openraft backs off); a new
//!   connection is tried after a short, growing wait ([`TransportConfig`]), never in a tight
//!   loop.
//! - A lost connection fails every request waiting on it at once (`Unreachable`); the next
//!   request reconnects.
//! - Every RPC is bounded by its `RPCOption::hard_ttl()` and then fails with `Timeout`.
//! - A shard the peer does not host answers as `Unreachable` (the group may be starting); an
//!   error of the peer's Raft group comes back as `RemoteError`.
//! - [`LinkFaults`] cuts chosen peers off for chaos tests: the no-root partition layer.
//!
//! **Boundary:** this module knows openraft's RPC types, tokio and bincode; it does not know how
//! groups store their logs or what their entries mean.

mod client;
mod error;
mod faults;
mod frame;
mod server;

pub use client::{RaftTransport, ShardNetwork, ShardNetworkFactory, TransportConfig};
pub use error::{HandlerError, TransportError};
pub use faults::LinkFaults;
pub use frame::{handshake, HANDSHAKE_BYTES, MAX_FRAME_BYTES, PROTOCOL_PREAMBLE};
pub use server::{serve, LeaderContact, RpcHandler, ShardRegistry};

//! Partitions without root: a TCP proxy in front of every node's Raft listener.
//!
//! Node j binds its Raft listener on a private port, while every node's config advertises the
//! proxy's port for j (`cluster.nodes[j].raft_addr`). A node dialing j opens with a 16-byte
//! handshake: the 8-byte preamble `LDGRAFT\x03`, then its own node id (u64, big endian). The
//! proxy reads it, learns the (source, target) link, and forwards the bytes (handshake
//! included) both ways, unless the link is blocked: then the connection is closed at once. When
//! a partition starts, live connections of newly blocked links are closed too, so Raft notices
//! within a reconnect attempt.
//!
//! Only Raft traffic goes through the proxy. HTTP forwarding between nodes (a request sent to a
//! follower is forwarded to the shard leader) is not partitioned.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::HarnessError;
use crate::NodeId;

/// The Raft transport's protocol preamble (name and version), the first 8 handshake bytes.
pub const RAFT_PREAMBLE: [u8; 8] = *b"LDGRAFT\x03";
/// Preamble plus the dialing node's id.
pub const HANDSHAKE_BYTES: usize = 16;
/// A dialer that does not send its handshake within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The directed links currently cut: (source, target) means connections dialed by source to
/// target are refused.
pub type BlockedLinks = BTreeSet<(NodeId, NodeId)>;

/// Parses a handshake; returns the dialing node's id, or `None` for a foreign preamble.
pub fn parse_handshake(bytes: &[u8; HANDSHAKE_BYTES]) -> Option<NodeId> {
    if bytes[..RAFT_PREAMBLE.len()] != RAFT_PREAMBLE {
        return None;
    }
    let mut id = [0_u8; 8];
    id.copy_from_slice(&bytes[RAFT_PREAMBLE.len()..]);
    Some(NodeId::from_be_bytes(id))
}

/// Both directions between every node of `side_a` and every node of `side_b`.
pub fn cut_between(side_a: &[NodeId], side_b: &[NodeId]) -> BlockedLinks {
    let mut links = BlockedLinks::new();
    for a in side_a {
        for b in side_b {
            if a != b {
                links.insert((*a, *b));
                links.insert((*b, *a));
            }
        }
    }
    links
}

struct LiveConnection {
    source: NodeId,
    target: NodeId,
    abort: AbortHandle,
}

#[derive(Default)]
struct ProxyState {
    blocked: BlockedLinks,
    live: HashMap<u64, LiveConnection>,
    next_connection_id: u64,
    refused: u64,
    foreign: u64,
}

/// The proxies of all nodes, sharing one table of blocked links.
pub struct RaftProxy {
    state: Arc<Mutex<ProxyState>>,
    listeners: Vec<JoinHandle<()>>,
}

/// One proxied node: the proxy listens on `advertised` and forwards to `private`.
#[derive(Clone, Copy, Debug)]
pub struct ProxiedNode {
    pub node: NodeId,
    pub advertised: SocketAddr,
    pub private: SocketAddr,
}

impl RaftProxy {
    /// Binds every advertised address and starts forwarding.
    pub async fn start(nodes: &[ProxiedNode]) -> Result<RaftProxy, HarnessError> {
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let mut listeners = Vec::new();
        for node in nodes {
            let listener =
                TcpListener::bind(node.advertised)
                    .await
                    .map_err(|error| HarnessError::Node {
                        node: node.node,
                        message: format!("binding the Raft proxy on {}: {error}", node.advertised),
                    })?;
            listeners.push(tokio::spawn(accept_loop(
                listener,
                *node,
                Arc::clone(&state),
            )));
        }
        Ok(RaftProxy { state, listeners })
    }

    /// Replaces the set of blocked links and closes live connections on newly blocked ones.
    pub fn set_blocked(&self, blocked: BlockedLinks) {
        let mut state = lock(&self.state);
        state.live.retain(|_, connection| {
            let cut = blocked.contains(&(connection.source, connection.target));
            if cut {
                connection.abort.abort();
            }
            !cut
        });
        state.blocked = blocked;
    }

    pub fn heal(&self) {
        self.set_blocked(BlockedLinks::new());
    }

    pub fn blocked(&self) -> BlockedLinks {
        lock(&self.state).blocked.clone()
    }

    /// Connections refused because their link was blocked, and connections with a foreign
    /// preamble (a version mismatch between harness and ledger would show here).
    pub fn counters(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.refused, state.foreign)
    }
}

impl Drop for RaftProxy {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        for connection in lock(&self.state).live.values() {
            connection.abort.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, node: ProxiedNode, state: Arc<Mutex<ProxyState>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Accept errors (e.g. too many open files) are transient for a listener; the
            // dialer sees a failed connection and retries.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            proxy_connection(inbound, node, state).await;
        });
    }
}

async fn proxy_connection(
    mut inbound: TcpStream,
    node: ProxiedNode,
    state: Arc<Mutex<ProxyState>>,
) {
    let mut handshake = [0_u8; HANDSHAKE_BYTES];
    let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.read_exact(&mut handshake)).await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let Some(source) = parse_handshake(&handshake) else {
        lock(&state).foreign += 1;
        return;
    };
    let target = node.node;
    if lock(&state).blocked.contains(&(source, target)) {
        lock(&state).refused += 1;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(node.private).await else {
        // The target is down (killed): the dialer sees a closed connection, as it would have.
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if outbound.write_all(&handshake).await.is_err() {
        return;
    }
    let forwarding = tokio::spawn(async move {
        // Ends when either side closes; errors are a closed link, nothing to report.
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    let connection_id = {
        let mut guard = lock(&state);
        // The partition may have started while this connection was being set up.
        if guard.blocked.contains(&(source, target)) {
            forwarding.abort();
            guard.refused += 1;
            return;
        }
        let id = guard.next_connection_id;
        guard.next_connection_id += 1;
        guard.live.insert(
            id,
            LiveConnection {
                source,
                target,
                abort: forwarding.abort_handle(),
            },
        );
        id
    };
    let _ = forwarding.await;
    lock(&state).live.remove(&connection_id);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state holds plain sets and counters; a panic elsewhere leaves it consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(id: NodeId) -> [u8; HANDSHAKE_BYTES] {
        let mut bytes = [0_u8; HANDSHAKE_BYTES];
        bytes[..8].copy_from_slice(&RAFT_PREAMBLE);
        bytes[8..].copy_from_slice(&id.to_be_bytes());
        bytes
    }

    #[test]
    fn parses_the_dialer_of_a_handshake() {
        assert_eq!(parse_handshake(&handshake(3)), Some(3));
        let mut foreign = handshake(3);
        foreign[7] = 1;
        assert_eq!(parse_handshake(&foreign), None);
    }

    #[test]
    fn a_cut_is_symmetric_and_skips_self_links() {
        let links = cut_between(&[1], &[2, 3]);
        let expected: BlockedLinks = [(1, 2), (2, 1), (1, 3), (3, 1)].into_iter().collect();
        assert_eq!(links, expected);
    }

    /// An echo server behind the proxy: allowed links echo, blocked links are closed, and a
    /// partition closes the live connection of its link.
    #[tokio::test]
    async fn forwards_allowed_links_and_cuts_blocked_ones() {
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let private = backend.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let mut received = [0_u8; HANDSHAKE_BYTES];
                    if stream.read_exact(&mut received).await.is_err() {
                        return;
                    }
                    let mut buffer = [0_u8; 64];
                    while let Ok(count) = stream.read(&mut buffer).await {
                        if count == 0 || stream.write_all(&buffer[..count]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let advertised = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("address")
        };
        let proxy = RaftProxy::start(&[ProxiedNode {
            node: 2,
            advertised,
            private,
        }])
        .await
        .expect("proxy starts");

        let mut allowed = TcpStream::connect(advertised).await.expect("connect");
        allowed.write_all(&handshake(1)).await.expect("write");
        allowed.write_all(b"ping").await.expect("write");
        let mut echo = [0_u8; 4];
        allowed.read_exact(&mut echo).await.expect("the echo");
        assert_eq!(&echo, b"ping");

        proxy.set_blocked(cut_between(&[1], &[2]));
        let mut after_cut = [0_u8; 1];
        let closed = allowed.read(&mut after_cut).await;
        assert!(matches!(closed, Ok(0) | Err(_)), "the live link is closed");

        let mut refused = TcpStream::connect(advertised).await.expect("connect");
        refused.write_all(&handshake(1)).await.expect("write");
        let mut nothing = [0_u8; 1];
        let answer = refused.read(&mut nothing).await;
        assert!(
            matches!(answer, Ok(0) | Err(_)),
            "a blocked dialer is refused"
        );
        assert_eq!(proxy.counters().0, 1);

        // Node 3 is not cut from node 2.
        let mut other = TcpStream::connect(advertised).await.expect("connect");
        other.write_all(&handshake(3)).await.expect("write");
        other.write_all(b"pong").await.expect("write");
        other.read_exact(&mut echo).await.expect("the echo");
        assert_eq!(&echo, b"pong");
    }
}

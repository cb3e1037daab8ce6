//! The client side: [`RaftTransport`] (one per node) keeps one multiplexed connection per peer
//! address, shared by the openraft clients of every shard ([`ShardNetwork`]).
//!
//! Per peer there is one *link task*, the only writer of that peer's socket. A caller encodes its
//! request, queues it to the link task and waits for the answer under the RPC's hard TTL; the link
//! task connects when needed, registers the waiting caller under the request id and writes the
//! frame; the connection's *reader task* hands each response to the caller waiting for its
//! request id, in whatever order the peer answers.
//!
//! **Invariant:** a waiting caller is failed at most once and never hangs past its TTL: every
//! waiter is registered against one connection, and when that connection is lost all its waiters
//! fail at once with `ConnectionLost` (openraft then sees `Unreachable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{HandlerError, TransportError};
use super::faults::LinkFaults;
use super::frame::{
    decode_payload, encode_frame, handshake, FrameReader, RequestBody, RequestFrame, ResponseBody,
    ResponseFrame, MAX_FRAME_BYTES,
};
use crate::types::{LedgerNode, NodeId, ShardId, TypeConfig};

/// Socket buffer of a link's writer: heartbeats of many shards coalesce into one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// At most this many queued requests are written before the writer flushes, so one busy burst
/// cannot delay the first request of the burst indefinitely.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// Tuning of the client side of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// How long one TCP connect may take before the peer counts as unreachable.
    pub connect_timeout: Duration,
    /// After a failed connection attempt, requests to that peer fail at once for this long before
    /// the next attempt; the wait doubles with each consecutive failure.
    pub reconnect_backoff_min: Duration,
    /// The ceiling of the reconnect wait.
    pub reconnect_backoff_max: Duration,
    /// The largest frame payload this client sends or accepts. Must not exceed the limit of the
    /// peers' servers ([`MAX_FRAME_BYTES`]), which close a connection that carries a larger one.
    pub max_frame_bytes: usize,
    /// Requests queued to one peer's link task before callers wait for room (their RPC timeout
    /// still applies while they wait).
    pub outbound_queue_capacity: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            max_frame_bytes: MAX_FRAME_BYTES,
            outbound_queue_capacity: 4096,
        }
    }
}

/// The client side of the node-to-node transport; one per node, shared by all its shard groups.
pub struct RaftTransport {
    local_node_id: NodeId,
    config: TransportConfig,
    faults: LinkFaults,
    /// One link per peer `raft_addr`, created on first use.
    links: Mutex<HashMap<String, Arc<PeerLink>>>,
}

impl RaftTransport {
    /// A transport with the default [`TransportConfig`]. No connection is made until a request
    /// needs one.
    pub fn new(local_node_id: NodeId) -> Arc<RaftTransport> {
        Self::with_config(local_node_id, TransportConfig::default())
    }

    pub fn with_config(local_node_id: NodeId, config: TransportConfig) -> Arc<RaftTransport> {
        Arc::new(RaftTransport {
            local_node_id,
            config,
            faults: LinkFaults::default(),
            links: Mutex::new(HashMap::new()),
        })
    }

    pub fn local_node_id(&self) -> NodeId {
        self.local_node_id
    }

    /// The fault-injection handle of this node's outgoing links (see [`LinkFaults`]).
    pub fn faults(&self) -> &LinkFaults {
        &self.faults
    }

    /// Asks `target` whether it would vote for this node in `shard` now (see
    /// [`election_gate`](crate::election_gate)). Any failure to get an answer within `ttl` counts
    /// as a refusal: a peer that cannot be reached cannot vote either.
    pub async fn pre_vote(
        self: &Arc<Self>,
        shard: ShardId,
        target: NodeId,
        target_node: &LedgerNode,
        ttl: Duration,
    ) -> bool {
        let network = ShardNetwork {
            link: self.link(&target_node.raft_addr),
            transport: Arc::clone(self),
            shard,
            target,
            target_node: target_node.clone(),
        };
        let candidate = self.local_node_id;
        let answer = match network.encode_request(RequestBody::PreVote { candidate }) {
            Ok((request_id, frame)) => network.call(request_id, frame, ttl).await,
            Err(error) => Err(CallFailure::Transport(error)),
        };
        match answer {
            Ok(ResponseBody::PreVote(Ok(granted))) => granted,
            Ok(ResponseBody::PreVote(Err(error))) => {
                tracing::debug!(shard, target, %error, "pre-vote refused by the peer's handler");
                false
            }
            Ok(other) => {
                tracing::warn!(
                    shard,
                    target,
                    received = other.kind(),
                    "unexpected answer to a pre-vote"
                );
                false
            }
            Err(CallFailure::Timeout) => {
                tracing::debug!(shard, target, "pre-vote timed out");
                false
            }
            Err(CallFailure::Transport(error)) => {
                tracing::debug!(shard, target, %error, "pre-vote failed");
                false
            }
        }
    }

    /// The openraft network factory of one shard's group on this node. All shards' factories
    /// send over the same per-peer connections.
    pub fn network_factory(self: &Arc<Self>, shard: ShardId) -> ShardNetworkFactory {
        ShardNetworkFactory {
            transport: Arc::clone(self),
            shard,
        }
    }

    /// The link to `address`, started on first use. Must be called inside a tokio runtime (the
    /// link task is spawned there).
    fn link(&self, address: &str) -> Arc<PeerLink> {
        let mut links = self.links.lock();
        if let Some(link) = links.get(address) {
            // A link whose task is gone (it cannot end while senders exist unless it panicked)
            // is replaced rather than failing every request forever.
            if !link.outbound.is_closed() {
                return Arc::clone(link);
            }
        }
        let link = PeerLink::start(address.to_string(), self.local_node_id, self.config.clone());
        links.insert(address.to_string(), Arc::clone(&link));
        link
    }
}

/// The [`RaftNetworkFactory`] of one shard: openraft asks it for a client per target node.
#[derive(Clone)]
pub struct ShardNetworkFactory {
    transport: Arc<RaftTransport>,
    shard: ShardId,
}

impl ShardNetworkFactory {
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = ShardNetwork;

    async fn new_client(&mut self, target: NodeId, node: &LedgerNode) -> ShardNetwork {
        ShardNetwork {
            link: self.transport.link(&node.raft_addr),
            transport: Arc::clone(&self.transport),
            shard: self.shard,
            target,
            target_node: node.clone(),
        }
    }
}

/// One shard group's client to one target node, sending over the shared link to its address.
pub struct ShardNetwork {
    transport: Arc<RaftTransport>,
    link: Arc<PeerLink>,
    shard: ShardId,
    target: NodeId,
    target_node: LedgerNode,
}

/// Why a call produced no response.
enum CallFailure {
    Timeout,
    Transport(TransportError),
}

impl ShardNetwork {
    /// Encodes `body` into a request frame with a fresh request id.
    fn encode_request(&self, body: RequestBody) -> Result<(u64, Vec<u8>), TransportError> {
        let request_id = self.link.next_request_id.fetch_add(1, Ordering::Relaxed);
        let request = RequestFrame {
            request_id,
            shard: self.shard,
            body,
        };
        let frame = encode_frame(&request, self.transport.config.max_frame_bytes)?;
        Ok((request_id, frame))
    }

    /// Sends an encoded request and waits for its response under the RPC's hard TTL.
    async fn call(
        &self,
        request_id: u64,
        frame: Vec<u8>,
        ttl: Duration,
    ) -> Result<ResponseBody, CallFailure> {
        let faults = &self.transport.faults;
        if faults.is_blocked(self.target) {
            return Err(CallFailure::Transport(TransportError::Blocked {
                target: self.target,
            }));
        }
        let exchange = self.link.exchange(request_id, frame);
        let response = match tokio::time::timeout(ttl, exchange).await {
            Err(_elapsed) => return Err(CallFailure::Timeout),
            Ok(response) => response.map_err(CallFailure::Transport)?,
        };
        // A response that raced with a new partition is dropped, as the cut link would have.
        if faults.is_blocked(self.target) {
            return Err(CallFailure::Transport(TransportError::Blocked {
                target: self.target,
            }));
        }
        Ok(response)
    }

    /// The openraft error for a failed call: `Unreachable` makes openraft back off before it
    /// retries this target, `Network` does not.
    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        failure: CallFailure,
        option: &RPCOption,
    ) -> RPCError<NodeId, LedgerNode, E> {
        match failure {
            CallFailure::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.transport.local_node_id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            CallFailure::Transport(error) => self.transport_error(&error),
        }
    }

    fn transport_error<E: std::error::Error>(
        &self,
        error: &TransportError,
    ) -> RPCError<NodeId, LedgerNode, E> {
        tracing::debug!(
            shard = self.shard,
            target = self.target,
            %error,
            "Raft RPC failed"
        );
        if error.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(error))
        } else {
            RPCError::Network(NetworkError::new(error))
        }
    }

    /// Turns the handler's answer into openraft's result for this RPC.
    // The error type is the one openraft's `RaftNetwork` methods return; its size is not ours.
    #[allow(clippy::result_large_err)]
    fn handler_result<T, E: std::error::Error>(
        &self,
        result: Result<T, HandlerError<E>>,
    ) -> Result<T, RPCError<NodeId, LedgerNode, RaftError<NodeId, E>>> {
        match result {
            Ok(response) => Ok(response),
            Err(HandlerError::Raft(error)) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.target, self.target_node.clone(), error),
            )),
            Err(HandlerError::UnknownShard { shard }) => {
                Err(self.transport_error(&TransportError::UnknownShard {
                    target: self.target,
                    shard,
                }))
            }
        }
    }

    /// The error for a response of the wrong kind (or a server that could not answer).
    fn unexpected_response<E: std::error::Error>(
        &self,
        expected: RPCTypes,
        body: ResponseBody,
    ) -> RPCError<NodeId, LedgerNode, E> {
        let error = match body {
            ResponseBody::ServerFailure { message } => TransportError::RemoteFailure { message },
            other => TransportError::UnexpectedResponse {
                expected,
                received: other.kind(),
            },
        };
        self.transport_error(&error)
    }
}

type RaftRpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, LedgerNode, RaftError<NodeId, E>>;

impl RaftNetwork<TypeConfig> for ShardNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let action = RPCTypes::AppendEntries;
        let entry_count = rpc.entries.len();
        let (request_id, frame) = match self.encode_request(RequestBody::AppendEntries(rpc)) {
            Ok(encoded) => encoded,
            // Too many entries for one frame: openraft retries at once with fewer.
            Err(error @ TransportError::FrameTooLarge { .. }) if entry_count > 1 => {
                let entries_hint = (entry_count / 2) as u64;
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries_hint).with_source_error(&error),
                ));
            }
            // One entry alone exceeds the limit and can never be sent. openraft would retry a
            // `PayloadTooLarge` of one entry at once, forever; `Unreachable` makes it back off
            // while the log line tells the operator that batches must be bounded in bytes.
            Err(error @ TransportError::FrameTooLarge { .. }) => {
                tracing::error!(
                    shard = self.shard,
                    target = self.target,
                    %error,
                    "a single Raft entry exceeds the transport's frame limit"
                );
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
            Err(error) => return Err(self.transport_error(&error)),
        };
        match self.call(request_id, frame, option.hard_ttl()).await {
            Ok(ResponseBody::AppendEntries(result)) => self.handler_result(result),
            Ok(other) => Err(self.unexpected_response(action, other)),
            Err(failure) => Err(self.rpc_error(action, failure, &option)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let action = RPCTypes::Vote;
        let (request_id, frame) = self
            .encode_request(RequestBody::Vote(rpc))
            .map_err(|error| self.transport_error(&error))?;
        match self.call(request_id, frame, option.hard_ttl()).await {
            Ok(ResponseBody::Vote(result)) => self.handler_result(result),
            Ok(other) => Err(self.unexpected_response(action, other)),
            Err(failure) => Err(self.rpc_error(action, failure, &option)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        let action = RPCTypes::InstallSnapshot;
        let (request_id, frame) = self
            .encode_request(RequestBody::InstallSnapshot(rpc))
            .map_err(|error| self.transport_error(&error))?;
        match self.call(request_id, frame, option.hard_ttl()).await {
            Ok(ResponseBody::InstallSnapshot(result)) => self.handler_result(result),
            Ok(other) => Err(self.unexpected_response(action, other)),
            Err(failure) => Err(self.rpc_error(action, failure, &option)),
        }
    }
}

/// Where a response goes: the caller waiting for it.
type ResponseSlot = oneshot::Sender<Result<ResponseBody, TransportError>>;

/// A request on its way to the link task.
struct OutboundRequest {
    request_id: u64,
    frame: Vec<u8>,
    reply: ResponseSlot,
}

/// The shared side of one peer's link: what callers need to queue requests and wait.
struct PeerLink {
    address: String,
    next_request_id: AtomicU64,
    waiters: Arc<Waiters>,
    outbound: mpsc::Sender<OutboundRequest>,
}

impl PeerLink {
    fn start(address: String, local_node_id: NodeId, config: TransportConfig) -> Arc<PeerLink> {
        let (outbound, queue) = mpsc::channel(config.outbound_queue_capacity.max(1));
        let waiters = Arc::new(Waiters::new(address.clone()));
        let task = LinkTask {
            address: address.clone(),
            local_node_id,
            backoff: ReconnectBackoff::new(&config),
            config,
            waiters: Arc::clone(&waiters),
            queue,
            next_connection_id: 0,
        };
        tokio::spawn(task.run());
        Arc::new(PeerLink {
            address,
            next_request_id: AtomicU64::new(0),
            waiters,
            outbound,
        })
    }

    /// Queues an encoded request and waits for its response (no timeout of its own: the caller
    /// bounds it, and dropping this future withdraws the request).
    async fn exchange(
        &self,
        request_id: u64,
        frame: Vec<u8>,
    ) -> Result<ResponseBody, TransportError> {
        let (reply, receiver) = oneshot::channel();
        let mut waiting = WaitingCaller {
            request_id,
            receiver,
            waiters: &self.waiters,
        };
        let link_closed = || TransportError::LinkClosed {
            address: self.address.clone(),
        };
        let request = OutboundRequest {
            request_id,
            frame,
            reply,
        };
        self.outbound
            .send(request)
            .await
            .map_err(|_| link_closed())?;
        match (&mut waiting.receiver).await {
            Ok(result) => result,
            Err(_) => Err(link_closed()),
        }
    }
}

/// A caller waiting for its response. Dropping it (the caller timed out or was cancelled)
/// withdraws the request so its slot does not linger until the connection closes.
struct WaitingCaller<'link> {
    request_id: u64,
    receiver: oneshot::Receiver<Result<ResponseBody, TransportError>>,
    waiters: &'link Waiters,
}

impl Drop for WaitingCaller<'_> {
    fn drop(&mut self) {
        // Close first: the link task checks `is_closed` under the waiters' lock, so after this a
        // request still in the queue is skipped, and one already registered is removed below.
        self.receiver.close();
        self.waiters.forget(self.request_id);
    }
}

/// The callers waiting for responses on a peer's current connection.
struct Waiters {
    address: String,
    table: Mutex<WaiterTable>,
}

#[derive(Default)]
struct WaiterTable {
    /// The connection requests can be registered against; `None` while disconnected.
    live_connection: Option<u64>,
    by_request_id: HashMap<u64, Waiter>,
}

struct Waiter {
    connection_id: u64,
    reply: ResponseSlot,
}

enum Registration {
    Registered,
    /// The caller gave up already; nothing to send.
    CallerGone,
    /// The connection was lost before the request could be registered on it.
    ConnectionDown(ResponseSlot),
}

impl Waiters {
    fn new(address: String) -> Self {
        Self {
            address,
            table: Mutex::new(WaiterTable::default()),
        }
    }

    fn open(&self, connection_id: u64) {
        self.table.lock().live_connection = Some(connection_id);
    }

    fn is_live(&self, connection_id: u64) -> bool {
        self.table.lock().live_connection == Some(connection_id)
    }

    fn register(&self, request_id: u64, connection_id: u64, reply: ResponseSlot) -> Registration {
        let mut table = self.table.lock();
        if reply.is_closed() {
            return Registration::CallerGone;
        }
        if table.live_connection != Some(connection_id) {
            return Registration::ConnectionDown(reply);
        }
        table.by_request_id.insert(
            request_id,
            Waiter {
                connection_id,
                reply,
            },
        );
        Registration::Registered
    }

    fn complete(&self, request_id: u64, body: ResponseBody) {
        let waiter = self.table.lock().by_request_id.remove(&request_id);
        match waiter {
            // The caller may have timed out in the meantime; then the answer has no taker.
            Some(waiter) => drop(waiter.reply.send(Ok(body))),
            None => tracing::trace!(
                peer = %self.address,
                request_id,
                "response for a request nobody waits for any more"
            ),
        }
    }

    fn forget(&self, request_id: u64) {
        self.table.lock().by_request_id.remove(&request_id);
    }

    /// Fails every caller waiting on `connection_id` and stops new registrations on it.
    /// Idempotent: the reader and the writer may both notice the loss.
    fn fail_connection(&self, connection_id: u64, reason: &str) {
        let failed: Vec<Waiter> = {
            let mut table = self.table.lock();
            if table.live_connection == Some(connection_id) {
                table.live_connection = None;
            }
            let failed_ids: Vec<u64> = table
                .by_request_id
                .iter()
                .filter(|(_, waiter)| waiter.connection_id == connection_id)
                .map(|(request_id, _)| *request_id)
                .collect();
            failed_ids
                .iter()
                .filter_map(|request_id| table.by_request_id.remove(request_id))
                .collect()
        };
        for waiter in failed {
            let error = TransportError::ConnectionLost {
                address: self.address.clone(),
                reason: reason.to_string(),
            };
            drop(waiter.reply.send(Err(error)));
        }
    }
}

/// The reconnect policy: after a failed attempt, fail fast until the wait is over, doubling the
/// wait per consecutive failure. A peer that is down costs one connect per wait, not one per
/// request.
struct ReconnectBackoff {
    min: Duration,
    max: Duration,
    consecutive_failures: u32,
    retry_not_before: Option<Instant>,
    last_error: String,
}

impl ReconnectBackoff {
    fn new(config: &TransportConfig) -> Self {
        Self {
            min: config.reconnect_backoff_min,
            max: config
                .reconnect_backoff_max
                .max(config.reconnect_backoff_min),
            consecutive_failures: 0,
            retry_not_before: None,
            last_error: String::new(),
        }
    }

    /// `Err(PeerDown)` while the wait after the last failure is not over.
    fn check(&self, address: &str, now: Instant) -> Result<(), TransportError> {
        match self.retry_not_before {
            Some(retry_at) if now < retry_at => Err(TransportError::PeerDown {
                address: address.to_string(),
                retry_in_ms: (retry_at - now).as_millis() as u64,
                last_error: self.last_error.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, now: Instant, error: &TransportError) {
        let doublings = self.consecutive_failures.min(16);
        let wait = self.min.saturating_mul(1 << doublings).min(self.max);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.retry_not_before = Some(now + wait);
        self.last_error = error.to_string();
    }

    fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.retry_not_before = None;
        self.last_error.clear();
    }
}

/// One established connection, as seen by the link task.
struct Connection {
    id: u64,
    writer: BufWriter<OwnedWriteHalf>,
    /// Ends (with the reason) when the connection can no longer deliver responses.
    reader: JoinHandle<String>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping the write half alone would leave the reader waiting on a half-open socket.
        self.reader.abort();
    }
}

/// What woke the link task up.
enum LinkEvent {
    ConnectionEnded(String),
    Request(Option<OutboundRequest>),
}

/// The task that owns one peer's connection: connects on demand, writes every request, and
/// notices when the connection dies.
struct LinkTask {
    address: String,
    /// Named in the handshake of every connection.
    local_node_id: NodeId,
    config: TransportConfig,
    backoff: ReconnectBackoff,
    waiters: Arc<Waiters>,
    queue: mpsc::Receiver<OutboundRequest>,
    next_connection_id: u64,
}

impl LinkTask {
    async fn run(mut self) {
        let mut connection: Option<Connection> = None;
        loop {
            let event = match connection.as_mut() {
                Some(live) => tokio::select! {
                    ended = &mut live.reader => {
                        LinkEvent::ConnectionEnded(ended.unwrap_or_else(|error| error.to_string()))
                    }
                    next = self.queue.recv() => LinkEvent::Request(next),
                },
                None => LinkEvent::Request(self.queue.recv().await),
            };
            let request = match event {
                LinkEvent::ConnectionEnded(reason) => {
                    if let Some(lost) = connection.take() {
                        self.waiters.fail_connection(lost.id, &reason);
                    }
                    continue;
                }
                LinkEvent::Request(Some(request)) => request,
                // Every sender is gone: the transport and all its clients were dropped.
                LinkEvent::Request(None) => break,
            };
            if request.reply.is_closed() {
                continue;
            }
            // The reader may have lost the connection since the last wake-up; a request must
            // not be written to a connection that can no longer answer it.
            if let Some(live) = &connection {
                if !self.waiters.is_live(live.id) {
                    connection = None;
                }
            }
            if connection.is_none() {
                match self.connect().await {
                    Ok(live) => connection = Some(live),
                    Err(error) => {
                        drop(request.reply.send(Err(error)));
                        continue;
                    }
                }
            }
            let Some(live) = connection.as_mut() else {
                continue;
            };
            if let Err(error) = self.write_requests(live, request).await {
                let reason = error.to_string();
                tracing::warn!(peer = %self.address, %reason, "Raft connection lost while writing");
                self.waiters.fail_connection(live.id, &reason);
                connection = None;
            }
        }
        if let Some(live) = connection {
            self.waiters
                .fail_connection(live.id, "the transport was dropped");
        }
    }

    /// Connects unless a recent failure says to wait; starts the connection's reader.
    async fn connect(&mut self) -> Result<Connection, TransportError> {
        self.backoff.check(&self.address, Instant::now())?;
        let stream = match self.open_stream().await {
            Ok(stream) => stream,
            Err(error) => {
                if self.backoff.consecutive_failures == 0 {
                    tracing::warn!(peer = %self.address, %error, "cannot connect to Raft peer");
                } else {
                    tracing::debug!(peer = %self.address, %error, "cannot connect to Raft peer");
                }
                self.backoff.failed(Instant::now(), &error);
                return Err(error);
            }
        };
        self.backoff.succeeded();
        self.next_connection_id += 1;
        let id = self.next_connection_id;
        tracing::info!(peer = %self.address, connection = id, "connected to Raft peer");
        let (read_half, write_half) = stream.into_split();
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
        // Buffered; it leaves with the first request.
        writer
            .write_all(&handshake(self.local_node_id))
            .await
            .map_err(|source| TransportError::Io { source })?;
        self.waiters.open(id);
        let frames = FrameReader::new(read_half, self.config.max_frame_bytes);
        let reader = tokio::spawn(read_responses(frames, id, Arc::clone(&self.waiters)));
        Ok(Connection { id, writer, reader })
    }

    async fn open_stream(&self) -> Result<TcpStream, TransportError> {
        let connect = TcpStream::connect(self.address.as_str());
        let stream = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Err(_elapsed) => {
                return Err(TransportError::ConnectTimeout {
                    address: self.address.clone(),
                    timeout_ms: self.config.connect_timeout.as_millis() as u64,
                })
            }
            Ok(connected) => connected.map_err(|source| TransportError::Connect {
                address: self.address.clone(),
                source,
            })?,
        };
        // Raft messages are latency bound; Nagle would hold heartbeats back.
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::Connect {
                address: self.address.clone(),
                source,
            })?;
        Ok(stream)
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn write_requests(
        &mut self,
        live: &mut Connection,
        first: OutboundRequest,
    ) -> Result<(), TransportError> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(request) = next.take() {
            match self
                .waiters
                .register(request.request_id, live.id, request.reply)
            {
                Registration::Registered => {
                    live.writer
                        .write_all(&request.frame)
                        .await
                        .map_err(|source| TransportError::Io { source })?;
                    written += 1;
                }
                Registration::CallerGone => {}
                Registration::ConnectionDown(reply) => {
                    let error = TransportError::ConnectionLost {
                        address: self.address.clone(),
                        reason: "the connection closed".to_string(),
                    };
                    drop(reply.send(Err(error)));
                    // The reader has failed this connection; the select in `run` notices it.
                    break;
                }
            }
            if written < MAX_FRAMES_PER_FLUSH {
                next = self.queue.try_recv().ok();
            }
        }
        live.writer
            .flush()
            .await
            .map_err(|source| TransportError::Io { source })
    }
}

/// The reader task of one connection: hands each response to its waiting caller; on any error
/// or end of stream fails the connection's remaining callers and returns the reason.
async fn read_responses(
    mut frames: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    connection_id: u64,
    waiters: Arc<Waiters>,
) -> String {
    let reason = loop {
        match frames.next_frame().await {
            Ok(Some(payload)) => match decode_payload::<ResponseFrame>(&payload) {
                Ok(response) => waiters.complete(response.request_id, response.body),
                Err(error) => break error.to_string(),
            },
            Ok(None) => break "the peer closed the connection".to_string(),
            Err(error) => break error.to_string(),
        }
    };
    tracing::warn!(peer = %waiters.address, connection = connection_id, %reason, "Raft connection lost");
    waiters.fail_connection(connection_id, &reason);
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_ms: u64, max_ms: u64) -> TransportConfig {
        TransportConfig {
            reconnect_backoff_min: Duration::from_millis(min_ms),
            reconnect_backoff_max: Duration::from_millis(max_ms),
            ..TransportConfig::default()
        }
    }

    fn any_error() -> TransportError {
        TransportError::ConnectTimeout {
            address: "peer".to_string(),
            timeout_ms: 1,
        }
    }

    #[test]
    fn the_reconnect_wait_doubles_up_to_its_ceiling_and_resets_on_success() {
        let mut backoff = ReconnectBackoff::new(&config(50, 300));
        let start = Instant::now();
        assert!(backoff.check("peer", start).is_ok(), "no failure yet");
        let mut expected_waits_ms = Vec::new();
        let mut observed_waits_ms = Vec::new();
        let mut wait_ms: u64 = 50;
        for _ in 0..6 {
            backoff.failed(start, &any_error());
            let retry_at = backoff.retry_not_before.expect("a failure sets a wait");
            observed_waits_ms.push((retry_at - start).as_millis() as u64);
            expected_waits_ms.push(wait_ms.min(300));
            wait_ms *= 2;
        }
        assert_eq!(observed_waits_ms, expected_waits_ms);
        let last_wait = Duration::from_millis(300);
        assert!(matches!(
            backoff.check("peer", start + last_wait - Duration::from_millis(1)),
            Err(TransportError::PeerDown { .. })
        ));
        assert!(backoff.check("peer", start + last_wait).is_ok());
        backoff.succeeded();
        assert!(backoff.check("peer", start).is_ok());
        backoff.failed(start, &any_error());
        assert_eq!(
            backoff.retry_not_before,
            Some(start + Duration::from_millis(50)),
            "the wait starts over after a success"
        );
    }

    #[test]
    fn a_zero_backoff_never_waits() {
        let mut backoff = ReconnectBackoff::new(&config(0, 0));
        let now = Instant::now();
        backoff.failed(now, &any_error());
        assert!(backoff.check("peer", now).is_ok());
    }

    #[tokio::test]
    async fn waiters_fail_only_their_own_connection_and_only_once() {
        let waiters = Waiters::new("peer".to_string());
        waiters.open(1);
        let (old_reply, old_receiver) = oneshot::channel();
        assert!(matches!(
            waiters.register(10, 1, old_reply),
            Registration::Registered
        ));
        waiters.fail_connection(1, "gone");
        assert!(matches!(
            old_receiver.await,
            Ok(Err(TransportError::ConnectionLost { .. }))
        ));

        // A registration against the lost connection is refused, not left waiting.
        let (late_reply, _late_receiver) = oneshot::channel();
        assert!(matches!(
            waiters.register(11, 1, late_reply),
            Registration::ConnectionDown(_)
        ));

        waiters.open(2);
        let (new_reply, new_receiver) = oneshot::channel();
        assert!(matches!(
            waiters.register(12, 2, new_reply),
            Registration::Registered
        ));
        // A late notice about connection 1 must not touch connection 2's callers.
        waiters.fail_connection(1, "gone again");
        waiters.complete(
            12,
            ResponseBody::ServerFailure {
                message: "answer".to_string(),
            },
        );
        assert!(matches!(
            new_receiver.await,
            Ok(Ok(ResponseBody::ServerFailure { message })) if message == "answer"
        ));
    }

    #[test]
    fn a_caller_that_gave_up_is_not_registered() {
        let waiters = Waiters::new("peer".to_string());
        waiters.open(1);
        let (reply, receiver) = oneshot::channel();
        drop(receiver);
        assert!(matches!(
            waiters.register(1, 1, reply),
            Registration::CallerGone
        ));
        assert!(waiters.table.lock().by_request_id.is_empty());
    }
}

//! The server side: [`serve`] accepts peers' connections and hands each request to an
//! [`RpcHandler`], normally the node's [`ShardRegistry`].
//!
//! Every request runs in its own task, so a slow snapshot chunk of one shard never holds back the
//! heartbeats of another on the same connection; answers leave through the connection's writer
//! task in the order they are ready, tagged with their request id.
//!
//! **Invariant:** a bad peer costs at most its own connection. An oversized, truncated or
//! undecodable frame, or a wrong preamble, closes that connection with a log line; the listener
//! and every other connection keep serving.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::ServerState;
use parking_lot::RwLock;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::error::{HandlerError, TransportError};
use super::frame::{
    decode_payload, encode_frame, FrameReader, RequestBody, RequestFrame, ResponseBody,
    ResponseFrame, MAX_FRAME_BYTES,
};
use crate::types::{LedgerRaft, NodeId, ShardId, TypeConfig};

/// Answers queued to one connection's writer before request tasks wait for room.
const RESPONSE_QUEUE_CAPACITY: usize = 1024;

/// Socket buffer of a connection's writer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// At most this many ready answers are written before the writer flushes.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// How long accepting pauses after an error such as running out of file descriptors, which
/// would otherwise fail again at once in a tight loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The server-side dispatch of Raft RPCs to this node's shard groups.
///
/// Object safe (methods return boxed futures) so the server can hold an `Arc<dyn RpcHandler>`.
pub trait RpcHandler: Send + Sync + 'static {
    fn append_entries(
        &self,
        shard: ShardId,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, HandlerError>>;

    fn vote(
        &self,
        shard: ShardId,
        request: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, HandlerError>>;

    fn install_snapshot(
        &self,
        shard: ShardId,
        request: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, HandlerError<InstallSnapshotError>>>;

    /// Whether this node would vote for `candidate` in `shard` now (see
    /// [`election_gate`](crate::election_gate)). Must not change any state.
    fn pre_vote(
        &self,
        shard: ShardId,
        candidate: NodeId,
    ) -> BoxFuture<'_, Result<bool, HandlerError>>;
}

/// The Raft groups this node hosts, by shard: the [`RpcHandler`] of a node.
#[derive(Default)]
pub struct ShardRegistry {
    groups: RwLock<BTreeMap<ShardId, RegisteredGroup>>,
}

#[derive(Clone)]
struct RegisteredGroup {
    raft: LedgerRaft,
    contact: Arc<LeaderContact>,
}

/// What this node knows about hearing from a shard's leader; written by the transport (every
/// accepted append-entries) and by the node's [election gate](crate::election_gate).
#[derive(Debug)]
pub struct LeaderContact {
    /// Append-entries requests handed to the group that it did not refuse as stale.
    appends_accepted: AtomicU64,
    /// Whether this node would grant a pre-vote: it has not heard from a leader for a while and
    /// does not lead the shard itself. A freshly registered group (a node that just started)
    /// knows no leader, so it starts out granting.
    grants_pre_vote: AtomicBool,
}

impl LeaderContact {
    fn new() -> Self {
        LeaderContact {
            appends_accepted: AtomicU64::new(0),
            grants_pre_vote: AtomicBool::new(true),
        }
    }

    /// A counter that moves whenever a leader was heard from.
    pub fn appends_accepted(&self) -> u64 {
        self.appends_accepted.load(Ordering::Relaxed)
    }

    pub fn set_grants_pre_vote(&self, grants: bool) {
        self.grants_pre_vote.store(grants, Ordering::Relaxed);
    }

    pub fn grants_pre_vote(&self) -> bool {
        self.grants_pre_vote.load(Ordering::Relaxed)
    }
}

impl ShardRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `shard`'s RPCs to `raft` from now on; returns the group it replaces, if any.
    pub fn register(&self, shard: ShardId, raft: LedgerRaft) -> Option<LedgerRaft> {
        let group = RegisteredGroup {
            raft,
            contact: Arc::new(LeaderContact::new()),
        };
        self.groups
            .write()
            .insert(shard, group)
            .map(|replaced| replaced.raft)
    }

    /// Stops routing `shard`'s RPCs; peers then see this node as unreachable for that shard.
    pub fn unregister(&self, shard: ShardId) -> Option<LedgerRaft> {
        self.groups.write().remove(&shard).map(|group| group.raft)
    }

    pub fn get(&self, shard: ShardId) -> Option<LedgerRaft> {
        self.group(shard).map(|group| group.raft)
    }

    /// The registered shards, in order.
    pub fn shards(&self) -> Vec<ShardId> {
        self.groups.read().keys().copied().collect()
    }

    /// Every registered group with its leader contact, in shard order.
    pub fn contacts(&self) -> Vec<(ShardId, LedgerRaft, Arc<LeaderContact>)> {
        self.groups
            .read()
            .iter()
            .map(|(&shard, group)| (shard, group.raft.clone(), Arc::clone(&group.contact)))
            .collect()
    }

    fn group(&self, shard: ShardId) -> Option<RegisteredGroup> {
        self.groups.read().get(&shard).cloned()
    }
}

impl RpcHandler for ShardRegistry {
    fn append_entries(
        &self,
        shard: ShardId,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, HandlerError>> {
        async move {
            let group = self
                .group(shard)
                .ok_or(HandlerError::UnknownShard { shard })?;
            let response = group.raft.append_entries(request).await?;
            // Only a leader whose term is current counts as heard from; a deposed one is told
            // about the higher vote and changes nothing.
            if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                group
                    .contact
                    .appends_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(response)
        }
        .boxed()
    }

    fn vote(
        &self,
        shard: ShardId,
        request: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, HandlerError>> {
        async move {
            let raft = self
                .get(shard)
                .ok_or(HandlerError::UnknownShard { shard })?;
            Ok(raft.vote(request).await?)
        }
        .boxed()
    }

    fn install_snapshot(
        &self,
        shard: ShardId,
        request: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, HandlerError<InstallSnapshotError>>>
    {
        async move {
            let raft = self
                .get(shard)
                .ok_or(HandlerError::UnknownShard { shard })?;
            Ok(raft.install_snapshot(request).await?)
        }
        .boxed()
    }

    fn pre_vote(
        &self,
        shard: ShardId,
        candidate: NodeId,
    ) -> BoxFuture<'_, Result<bool, HandlerError>> {
        async move {
            let group = self
                .group(shard)
                .ok_or(HandlerError::UnknownShard { shard })?;
            let leads = group.raft.metrics().borrow().state == ServerState::Leader;
            let granted = !leads && group.contact.grants_pre_vote();
            tracing::debug!(shard, candidate, granted, "pre-vote asked");
            Ok(granted)
        }
        .boxed()
    }
}

/// Serves Raft RPCs on `listener` until `shutdown` completes, then closes every connection
/// (requests in flight are dropped; their callers time out or see the connection lost).
///
/// Returns an error only when the listener itself is unusable; errors of single connections are
/// logged and end only that connection.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn RpcHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let local_address = listener
        .local_addr()
        .map(|address| address.to_string())
        .unwrap_or_else(|_| "an unknown address".to_string());
    tracing::info!(address = %local_address, "serving Raft RPCs");
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(run_connection(stream, peer, Arc::clone(&handler)));
                }
                Err(error) if is_fatal_accept_error(&error) => {
                    connections.shutdown().await;
                    return Err(TransportError::Accept { address: local_address, source: error });
                }
                Err(error) => {
                    tracing::warn!(address = %local_address, %error, "accepting a Raft connection failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
            Some(_finished) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!(address = %local_address, "stopped serving Raft RPCs");
    connections.shutdown().await;
    Ok(())
}

/// Errors that say the listener cannot work at all (rather than that one incoming connection
/// failed or resources are short for a moment).
fn is_fatal_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

async fn run_connection(stream: TcpStream, peer: SocketAddr, handler: Arc<dyn RpcHandler>) {
    tracing::debug!(%peer, "Raft connection accepted");
    match serve_connection(stream, handler).await {
        Ok(()) => tracing::debug!(%peer, "Raft connection closed by the peer"),
        Err(error) => tracing::warn!(%peer, %error, "closing Raft connection"),
    }
}

/// Aborts the task when dropped, so a connection's writer never outlives the connection.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection(
    stream: TcpStream,
    handler: Arc<dyn RpcHandler>,
) -> Result<(), TransportError> {
    stream
        .set_nodelay(true)
        .map_err(|source| TransportError::Io { source })?;
    let (read_half, write_half) = stream.into_split();
    let mut frames = FrameReader::new(read_half, MAX_FRAME_BYTES);
    let dialer = frames.read_handshake().await?;
    tracing::debug!(peer = dialer, "Raft peer connected");
    let (responses, response_queue) = mpsc::channel(RESPONSE_QUEUE_CAPACITY);
    let mut writer = AbortOnDrop(tokio::spawn(write_responses(write_half, response_queue)));
    // Dropping the set (when this function returns) aborts the requests still running: their
    // answers could not be delivered anyway.
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            // `next_frame` is cancel safe, so the other branches winning loses no bytes.
            frame = frames.next_frame() => {
                let Some(payload) = frame? else { return Ok(()) };
                let request: RequestFrame = decode_payload(&payload)?;
                in_flight.spawn(answer(Arc::clone(&handler), request, responses.clone()));
            }
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "a Raft RPC handler panicked; its caller will time out");
                    }
                }
            }
            written = &mut writer.0 => {
                return match written {
                    Ok(result) => result,
                    Err(error) => Err(TransportError::Io { source: io::Error::other(error) }),
                };
            }
        }
    }
}

/// Runs one request through the handler and queues its answer.
async fn answer(
    handler: Arc<dyn RpcHandler>,
    request: RequestFrame,
    responses: mpsc::Sender<Vec<u8>>,
) {
    let RequestFrame {
        request_id,
        shard,
        body,
    } = request;
    let body = match body {
        RequestBody::AppendEntries(request) => {
            ResponseBody::AppendEntries(handler.append_entries(shard, request).await)
        }
        RequestBody::Vote(request) => ResponseBody::Vote(handler.vote(shard, request).await),
        RequestBody::InstallSnapshot(request) => {
            ResponseBody::InstallSnapshot(handler.install_snapshot(shard, request).await)
        }
        RequestBody::PreVote { candidate } => {
            ResponseBody::PreVote(handler.pre_vote(shard, candidate).await)
        }
    };
    let frame = match encode_frame(&ResponseFrame { request_id, body }, MAX_FRAME_BYTES) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::error!(shard, request_id, %error, "cannot frame a Raft RPC answer");
            let failure = ResponseFrame {
                request_id,
                body: ResponseBody::ServerFailure {
                    message: error.to_string(),
                },
            };
            match encode_frame(&failure, MAX_FRAME_BYTES) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    // Fails only when the connection is closing, and then nobody can receive the answer.
    drop(responses.send(frame).await);
}

/// The writer task of one connection: writes answers as they become ready, flushing once per
/// burst.
async fn write_responses(
    write_half: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
) -> Result<(), TransportError> {
    let io_error = |source| TransportError::Io { source };
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    while let Some(frame) = queue.recv().await {
        writer.write_all(&frame).await.map_err(io_error)?;
        let mut written = 1;
        while written < MAX_FRAMES_PER_FLUSH {
            let Ok(frame) = queue.try_recv() else { break };
            writer.write_all(&frame).await.map_err(io_error)?;
            written += 1;
        }
        writer.flush().await.map_err(io_error)?;
    }
    Ok(())
}

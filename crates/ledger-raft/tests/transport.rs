//! The node-to-node transport over real loopback sockets: a fake `RpcHandler` behind `serve`,
//! `RaftTransport` clients in front, and where the test must count or cut connections, a small
//! TCP proxy between them.
//!
//! The fake handler answers with a pure function of (shard, request), the same model the tests
//! check against, so a response delivered to the wrong request or routed to the wrong shard
//! shows up as a mismatch. Nothing here sleeps to synchronize: tests wait on channels, and the
//! only time bound (`GENEROUS`) fails a test that would otherwise hang.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use futures::future::BoxFuture;
use futures::FutureExt;
use ledger_raft::network::{
    handshake, serve, HandlerError, RaftTransport, RpcHandler, ShardNetwork, ShardRegistry,
    TransportConfig, TransportError, MAX_FRAME_BYTES,
};
use ledger_raft::{Entry, LedgerBatch, LedgerNode, NodeId, ShardId, TypeConfig};
use openraft::error::{Fatal, InstallSnapshotError, RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::testing::log_id;
use openraft::{
    EntryPayload, Membership, RPCTypes, RaftNetwork, RaftNetworkFactory, SnapshotMeta,
    StoredMembership, Vote,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use support::CountingProxy;

const CLIENT_NODE: NodeId = 1;
const SERVER_NODE: NodeId = 2;

/// The fake handler answers requests for this shard with `UnknownShard`.
const UNKNOWN_SHARD: ShardId = 9_999;
/// The fake handler answers requests for this shard as a stopped Raft group would.
const STOPPED_SHARD: ShardId = 9_998;

/// A bound on waits that end far sooner unless the code under test is broken; it turns a hang
/// into a failure.
const GENEROUS: Duration = Duration::from_secs(30);

fn patient() -> RPCOption {
    RPCOption::new(GENEROUS)
}

// ---------------------------------------------------------------------------------------------
// The model: requests and the answers the fake handler gives them.

fn vote_request(shard: ShardId, salt: u64) -> VoteRequest<NodeId> {
    VoteRequest::new(
        Vote::new(salt, CLIENT_NODE),
        Some(log_id(salt, CLIENT_NODE, salt * 10 + u64::from(shard))),
    )
}

fn expected_vote(shard: ShardId, request: &VoteRequest<NodeId>) -> VoteResponse<NodeId> {
    VoteResponse::new(
        Vote::new(request.vote.leader_id.term + u64::from(shard), SERVER_NODE),
        request.last_log_id,
        // Odd shards refuse their vote, even ones grant it.
        shard % 2 != 1,
    )
}

fn append_request(shard: ShardId, entry_count: u64) -> AppendEntriesRequest<TypeConfig> {
    let first_index = u64::from(shard) + 1;
    let entries = (0..entry_count)
        .map(|offset| Entry {
            log_id: log_id(3, CLIENT_NODE, first_index + offset),
            payload: if offset % 2 == 0 {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(LedgerBatch {
                    timestamp_ms: offset,
                    commands: Vec::new().into(),
                })
            },
        })
        .collect();
    AppendEntriesRequest {
        vote: Vote::new_committed(3, CLIENT_NODE),
        prev_log_id: Some(log_id(3, CLIENT_NODE, u64::from(shard))),
        entries,
        leader_commit: None,
    }
}

fn expected_append(
    shard: ShardId,
    request: &AppendEntriesRequest<TypeConfig>,
) -> AppendEntriesResponse<NodeId> {
    match shard % 3 {
        0 => AppendEntriesResponse::Success,
        1 => {
            AppendEntriesResponse::PartialSuccess(request.entries.last().map(|entry| entry.log_id))
        }
        _ => {
            AppendEntriesResponse::HigherVote(Vote::new(request.entries.len() as u64, SERVER_NODE))
        }
    }
}

fn snapshot_request(shard: ShardId, chunk_bytes: usize) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(3, CLIENT_NODE),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3, CLIENT_NODE, 100)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("snapshot-of-shard-{shard}"),
        },
        offset: u64::from(shard) * 1_000,
        data: (0..chunk_bytes).map(|index| (index % 251) as u8).collect(),
        done: shard % 2 == 1,
    }
}

fn expected_snapshot(
    shard: ShardId,
    request: &InstallSnapshotRequest<TypeConfig>,
) -> InstallSnapshotResponse<NodeId> {
    let checksum: u64 = request.data.iter().map(|byte| u64::from(*byte)).sum();
    InstallSnapshotResponse {
        vote: Vote::new(
            request.offset + checksum + u64::from(request.done) + u64::from(shard),
            SERVER_NODE,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The fake handler.

struct FakeHandler {
    requests_seen: AtomicUsize,
    /// Requests for these shards wait until the test releases them.
    held_shards: BTreeSet<ShardId>,
    released: watch::Receiver<bool>,
    /// Every request's shard, as it arrives.
    arrivals: mpsc::UnboundedSender<ShardId>,
}

impl FakeHandler {
    async fn admit<E: std::error::Error>(&self, shard: ShardId) -> Result<(), HandlerError<E>> {
        self.requests_seen.fetch_add(1, Ordering::SeqCst);
        let _ = self.arrivals.send(shard);
        if self.held_shards.contains(&shard) {
            let mut released = self.released.clone();
            // An error means the test dropped the sender: stay held, as the test intends.
            if released.wait_for(|released| *released).await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
        match shard {
            UNKNOWN_SHARD => Err(HandlerError::UnknownShard { shard }),
            STOPPED_SHARD => Err(HandlerError::Raft(RaftError::Fatal(Fatal::Stopped))),
            _ => Ok(()),
        }
    }
}

impl RpcHandler for FakeHandler {
    fn append_entries(
        &self,
        shard: ShardId,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, HandlerError>> {
        async move {
            self.admit(shard).await?;
            Ok(expected_append(shard, &request))
        }
        .boxed()
    }

    fn vote(
        &self,
        shard: ShardId,
        request: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, HandlerError>> {
        async move {
            self.admit(shard).await?;
            Ok(expected_vote(shard, &request))
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
            self.admit(shard).await?;
            Ok(expected_snapshot(shard, &request))
        }
        .boxed()
    }

    /// Grants pre-votes for even shards, so an answer that travels the wrong way shows.
    fn pre_vote(
        &self,
        shard: ShardId,
        candidate: NodeId,
    ) -> BoxFuture<'_, Result<bool, HandlerError>> {
        async move {
            self.admit(shard).await?;
            Ok(shard.is_multiple_of(2) && candidate == CLIENT_NODE)
        }
        .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Servers, proxies and clients.

struct TestServer {
    address: String,
    handler: Arc<FakeHandler>,
    release: watch::Sender<bool>,
    arrivals: mpsc::UnboundedReceiver<ShardId>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), TransportError>>,
}

impl TestServer {
    async fn start(held_shards: &[ShardId]) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, held_shards)
    }

    fn start_on(listener: TcpListener, held_shards: &[ShardId]) -> TestServer {
        let address = listener.local_addr().expect("local address").to_string();
        let (release, released) = watch::channel(false);
        let (arrivals_sender, arrivals) = mpsc::unbounded_channel();
        let handler = Arc::new(FakeHandler {
            requests_seen: AtomicUsize::new(0),
            held_shards: held_shards.iter().copied().collect(),
            released,
            arrivals: arrivals_sender,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            drop(stopped.await);
        };
        let task = tokio::spawn(serve(listener, Arc::clone(&handler) as _, shutdown));
        TestServer {
            address,
            handler,
            release,
            arrivals,
            stop: Some(stop),
            task,
        }
    }

    fn requests_seen(&self) -> usize {
        self.handler.requests_seen.load(Ordering::SeqCst)
    }

    /// Waits until a request for `shard` reached the handler.
    async fn arrival_of(&mut self, shard: ShardId) {
        let wait = async {
            while let Some(arrived) = self.arrivals.recv().await {
                if arrived == shard {
                    return;
                }
            }
            panic!("the handler is gone");
        };
        tokio::time::timeout(GENEROUS, wait)
            .await
            .expect("the request reaches the handler");
    }

    fn release_held(&self) {
        self.release.send_replace(true);
    }

    async fn shut_down(mut self) -> Result<(), TransportError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(GENEROUS, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic")
    }
}

async fn client(transport: &Arc<RaftTransport>, shard: ShardId, address: &str) -> ShardNetwork {
    let node = LedgerNode {
        raft_addr: address.to_string(),
        http_addr: String::new(),
    };
    transport
        .network_factory(shard)
        .new_client(SERVER_NODE, &node)
        .await
}

/// An address nothing listens on (it was free a moment ago), and the listener to bring it up.
async fn reserved_address() -> (String, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    (address.to_string(), address)
}

fn expect_unreachable<T: std::fmt::Debug, E: std::error::Error>(
    result: Result<T, RPCError<NodeId, LedgerNode, E>>,
) -> String {
    match result {
        Err(RPCError::Unreachable(unreachable)) => unreachable.to_string(),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

/// Waits until the server closes `stream` (end of stream or a reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0_u8; 64];
    let read = tokio::time::timeout(GENEROUS, stream.read(&mut buffer)).await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn every_rpc_kind_of_many_shards_goes_over_one_connection() {
    let server = TestServer::start(&[]).await;
    let proxy = CountingProxy::start(&server.address).await;
    let transport = RaftTransport::new(CLIENT_NODE);

    let shards: Vec<ShardId> = (0..6).collect();
    for &shard in &shards {
        let mut network = client(&transport, shard, &proxy.address).await;

        let request = append_request(shard, 3);
        let expected = expected_append(shard, &request);
        let answer = network.append_entries(request, patient()).await;
        assert_eq!(answer.expect("append-entries answered"), expected);

        let request = vote_request(shard, 11);
        let expected = expected_vote(shard, &request);
        let answer = network.vote(request, patient()).await;
        assert_eq!(answer.expect("vote answered"), expected);

        let request = snapshot_request(shard, 4096);
        let expected = expected_snapshot(shard, &request);
        let answer = network.install_snapshot(request, patient()).await;
        assert_eq!(answer.expect("install-snapshot answered"), expected);
    }

    assert_eq!(server.requests_seen(), shards.len() * 3);
    assert_eq!(
        proxy.connections_accepted(),
        1,
        "all shards share one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_many_shards_are_answered_out_of_order() {
    const HELD_SHARD: ShardId = 0;
    const REQUESTS: u64 = 300;
    const SHARDS: u64 = 40;
    let mut server = TestServer::start(&[HELD_SHARD]).await;
    let proxy = CountingProxy::start(&server.address).await;
    let transport = RaftTransport::new(CLIENT_NODE);

    // The first request is held by the handler until every later one has been answered.
    let held_request = vote_request(HELD_SHARD, 1);
    let held_expected = expected_vote(HELD_SHARD, &held_request);
    let mut held_network = client(&transport, HELD_SHARD, &proxy.address).await;
    let held = tokio::spawn(async move { held_network.vote(held_request, patient()).await });
    server.arrival_of(HELD_SHARD).await;

    let mut requests = Vec::new();
    for index in 0..REQUESTS {
        let shard = (1 + index % SHARDS) as ShardId;
        let mut network = client(&transport, shard, &proxy.address).await;
        requests.push(tokio::spawn(async move {
            match index % 3 {
                0 => {
                    let request = append_request(shard, index % 5);
                    let expected = expected_append(shard, &request);
                    let answer = network.append_entries(request, patient()).await;
                    assert_eq!(answer.expect("append-entries answered"), expected);
                }
                1 => {
                    let request = vote_request(shard, index);
                    let expected = expected_vote(shard, &request);
                    let answer = network.vote(request, patient()).await;
                    assert_eq!(answer.expect("vote answered"), expected);
                }
                _ => {
                    let request = snapshot_request(shard, (index as usize % 7) * 1000);
                    let expected = expected_snapshot(shard, &request);
                    let answer = network.install_snapshot(request, patient()).await;
                    assert_eq!(answer.expect("install-snapshot answered"), expected);
                }
            }
        }));
    }
    for request in futures::future::join_all(requests).await {
        request.expect("the request task does not panic");
    }
    assert!(
        !held.is_finished(),
        "the held request is still waiting: later requests overtook it"
    );

    server.release_held();
    let held_answer = tokio::time::timeout(GENEROUS, held)
        .await
        .expect("the released request completes")
        .expect("no panic");
    assert_eq!(held_answer.expect("vote answered"), held_expected);
    assert_eq!(server.requests_seen(), REQUESTS as usize + 1);
    assert_eq!(proxy.connections_accepted(), 1);
}

#[tokio::test]
async fn an_rpc_past_its_hard_ttl_times_out_and_the_connection_stays_usable() {
    const HELD_SHARD: ShardId = 7;
    let server = TestServer::start(&[HELD_SHARD]).await;
    let proxy = CountingProxy::start(&server.address).await;
    let transport = RaftTransport::new(CLIENT_NODE);

    let hard_ttl = Duration::from_millis(100);
    let mut held_network = client(&transport, HELD_SHARD, &proxy.address).await;
    let answer = held_network
        .vote(vote_request(HELD_SHARD, 1), RPCOption::new(hard_ttl))
        .await;
    match answer {
        Err(RPCError::Timeout(timeout)) => {
            assert_eq!(timeout.action, RPCTypes::Vote);
            assert_eq!(timeout.id, CLIENT_NODE);
            assert_eq!(timeout.target, SERVER_NODE);
            assert_eq!(timeout.timeout, hard_ttl);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    let mut network = client(&transport, 1, &proxy.address).await;
    let request = vote_request(1, 2);
    let expected = expected_vote(1, &request);
    assert_eq!(
        network
            .vote(request, patient())
            .await
            .expect("vote answered"),
        expected
    );
    assert_eq!(
        proxy.connections_accepted(),
        1,
        "a timeout keeps the connection"
    );
}

#[tokio::test]
async fn a_down_peer_is_unreachable_at_once_and_reached_once_it_is_up() {
    let (address, socket_address) = reserved_address().await;
    let transport = RaftTransport::with_config(
        CLIENT_NODE,
        TransportConfig {
            reconnect_backoff_min: Duration::ZERO,
            reconnect_backoff_max: Duration::ZERO,
            ..TransportConfig::default()
        },
    );
    let mut network = client(&transport, 3, &address).await;

    // Unreachable, not a timeout: the answer came long before the generous TTL.
    let reason = expect_unreachable(network.vote(vote_request(3, 1), patient()).await);
    assert!(reason.contains("cannot connect"), "{reason}");

    let listener = TcpListener::bind(socket_address).await.expect("rebind");
    let server = TestServer::start_on(listener, &[]);
    let request = vote_request(3, 2);
    let expected = expected_vote(3, &request);
    let answer = network.vote(request, patient()).await;
    assert_eq!(answer.expect("the next request reconnects"), expected);
    server.shut_down().await.expect("serve ends cleanly");
}

#[tokio::test]
async fn requests_in_the_reconnect_wait_fail_without_connecting() {
    let (address, socket_address) = reserved_address().await;
    let an_hour = Duration::from_secs(3600);
    let transport = RaftTransport::with_config(
        CLIENT_NODE,
        TransportConfig {
            reconnect_backoff_min: an_hour,
            reconnect_backoff_max: an_hour,
            ..TransportConfig::default()
        },
    );
    let mut network = client(&transport, 3, &address).await;
    expect_unreachable(network.vote(vote_request(3, 1), patient()).await);

    // The peer is up now, but the link waits out its backoff instead of reconnecting per request.
    let listener = TcpListener::bind(socket_address).await.expect("rebind");
    let server = TestServer::start_on(listener, &[]);
    let reason = expect_unreachable(network.vote(vote_request(3, 2), patient()).await);
    assert!(reason.contains("next connection attempt"), "{reason}");
    assert_eq!(server.requests_seen(), 0);
}

#[tokio::test]
async fn a_lost_connection_fails_its_waiting_requests_and_the_next_request_reconnects() {
    const HELD_SHARD: ShardId = 5;
    let mut server = TestServer::start(&[HELD_SHARD]).await;
    let proxy = CountingProxy::start(&server.address).await;
    let transport = RaftTransport::new(CLIENT_NODE);

    let mut held_network = client(&transport, HELD_SHARD, &proxy.address).await;
    let held = tokio::spawn(async move {
        held_network
            .vote(vote_request(HELD_SHARD, 1), patient())
            .await
    });
    server.arrival_of(HELD_SHARD).await;
    proxy.sever_all();
    let held_answer = tokio::time::timeout(GENEROUS, held)
        .await
        .expect("the waiting request fails when its connection is lost")
        .expect("no panic");
    let reason = expect_unreachable(held_answer);
    assert!(reason.contains("lost"), "{reason}");

    let mut network = client(&transport, 1, &proxy.address).await;
    let request = vote_request(1, 2);
    let expected = expected_vote(1, &request);
    let answer = network.vote(request, patient()).await;
    assert_eq!(answer.expect("the next request reconnects"), expected);
    assert_eq!(proxy.connections_accepted(), 2);
}

#[tokio::test]
async fn a_blocked_peer_is_unreachable_without_anything_sent() {
    let server = TestServer::start(&[]).await;
    let transport = RaftTransport::new(CLIENT_NODE);
    let mut network = client(&transport, 4, &server.address).await;
    let faults = transport.faults();

    faults.block_peer(SERVER_NODE);
    assert_eq!(faults.blocked_peers(), vec![SERVER_NODE]);
    let reason = expect_unreachable(network.vote(vote_request(4, 1), patient()).await);
    assert!(reason.contains("blocked"), "{reason}");
    expect_unreachable(
        network
            .append_entries(append_request(4, 2), patient())
            .await,
    );
    expect_unreachable(
        network
            .install_snapshot(snapshot_request(4, 10), patient())
            .await,
    );
    assert_eq!(
        server.requests_seen(),
        0,
        "nothing reached the blocked peer"
    );

    faults.unblock_peer(SERVER_NODE);
    let request = vote_request(4, 2);
    let expected = expected_vote(4, &request);
    assert_eq!(
        network.vote(request, patient()).await.expect("unblocked"),
        expected
    );

    faults.block_peer(SERVER_NODE);
    faults.block_peer(SERVER_NODE + 1);
    expect_unreachable(network.vote(vote_request(4, 3), patient()).await);
    faults.unblock_all();
    assert!(faults.blocked_peers().is_empty());
    let request = vote_request(4, 4);
    let expected = expected_vote(4, &request);
    assert_eq!(
        network.vote(request, patient()).await.expect("unblocked"),
        expected
    );
    assert_eq!(server.requests_seen(), 2);
}

#[tokio::test]
async fn an_unknown_shard_is_unreachable_and_a_raft_error_is_a_remote_error() {
    let server = TestServer::start(&[]).await;
    let transport = RaftTransport::new(CLIENT_NODE);

    let mut unknown = client(&transport, UNKNOWN_SHARD, &server.address).await;
    let reason = expect_unreachable(
        unknown
            .vote(vote_request(UNKNOWN_SHARD, 1), patient())
            .await,
    );
    assert!(reason.contains("does not host shard"), "{reason}");

    let mut stopped = client(&transport, STOPPED_SHARD, &server.address).await;
    match stopped
        .append_entries(append_request(STOPPED_SHARD, 1), patient())
        .await
    {
        Err(RPCError::RemoteError(remote)) => {
            assert_eq!(remote.target, SERVER_NODE);
            assert_eq!(
                remote.target_node.map(|node| node.raft_addr),
                Some(server.address.clone())
            );
            assert_eq!(remote.source, RaftError::Fatal(Fatal::Stopped));
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_shard_registry_without_the_shard_answers_unreachable() {
    let registry = Arc::new(ShardRegistry::new());
    assert!(registry.shards().is_empty());
    assert!(registry.get(0).is_none());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, registry as _, async move {
        drop(stopped.await);
    }));

    let transport = RaftTransport::new(CLIENT_NODE);
    let mut network = client(&transport, 0, &address).await;
    expect_unreachable(network.vote(vote_request(0, 1), patient()).await);
    expect_unreachable(
        network
            .append_entries(append_request(0, 1), patient())
            .await,
    );
    expect_unreachable(
        network
            .install_snapshot(snapshot_request(0, 10), patient())
            .await,
    );

    let _ = stop.send(());
    let served = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("serve returns after shutdown")
        .expect("no panic");
    served.expect("serve ends cleanly");
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let server = TestServer::start(&[]).await;
    let proxy = CountingProxy::start(&server.address).await;
    let transport = RaftTransport::new(CLIENT_NODE);
    let mut network = client(&transport, 2, &proxy.address).await;
    let request = vote_request(2, 1);
    let expected = expected_vote(2, &request);
    assert_eq!(
        network.vote(request, patient()).await.expect("answered"),
        expected
    );

    // A frame one byte over the limit: refused on its header alone.
    let mut oversized = TcpStream::connect(&server.address).await.expect("connect");
    oversized.write_all(&handshake(9)).await.expect("write");
    let too_long = u32::try_from(MAX_FRAME_BYTES + 1).expect("the limit fits a u32");
    oversized
        .write_all(&too_long.to_be_bytes())
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut oversized).await,
        "oversized frame closes"
    );

    // A frame whose payload is not a request.
    let mut malformed = TcpStream::connect(&server.address).await.expect("connect");
    malformed.write_all(&handshake(9)).await.expect("write");
    let garbage = [1_u8, 0, 200, 200, 200];
    malformed
        .write_all(&(garbage.len() as u32).to_be_bytes())
        .await
        .expect("write");
    malformed.write_all(&garbage).await.expect("write");
    assert!(
        closed_by_server(&mut malformed).await,
        "malformed frame closes"
    );

    // Not this protocol at all.
    let mut stranger = TcpStream::connect(&server.address).await.expect("connect");
    stranger
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut stranger).await,
        "wrong preamble closes"
    );

    // The established connection and new ones keep being served.
    let request = vote_request(2, 2);
    let expected = expected_vote(2, &request);
    assert_eq!(
        network.vote(request, patient()).await.expect("answered"),
        expected
    );
    assert_eq!(proxy.connections_accepted(), 1);
    let other_transport = RaftTransport::new(CLIENT_NODE + 10);
    let mut other = client(&other_transport, 3, &server.address).await;
    let request = vote_request(3, 3);
    let expected = expected_vote(3, &request);
    assert_eq!(
        other.vote(request, patient()).await.expect("answered"),
        expected
    );
    assert_eq!(server.requests_seen(), 3);
}

#[tokio::test]
async fn an_append_entries_request_too_large_for_a_frame_is_split_by_openraft() {
    // The request fails before anything is sent, so no server is needed.
    let (address, _) = reserved_address().await;
    let transport = RaftTransport::with_config(
        CLIENT_NODE,
        TransportConfig {
            max_frame_bytes: 256,
            ..TransportConfig::default()
        },
    );
    let mut network = client(&transport, 1, &address).await;

    let entry_count = 100;
    match network
        .append_entries(append_request(1, entry_count), patient())
        .await
    {
        Err(RPCError::PayloadTooLarge(too_large)) => {
            assert_eq!(too_large.action(), RPCTypes::AppendEntries);
            assert_eq!(too_large.entries_hint(), entry_count / 2);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }

    // One entry that alone exceeds the limit cannot be split: the peer is unreachable for it
    // (openraft backs off instead of retrying at once forever).
    let nodes: BTreeMap<NodeId, LedgerNode> = (0..50)
        .map(|id| {
            let node = LedgerNode {
                raft_addr: format!("raft-node-{id}.example:7100"),
                http_addr: format!("http-node-{id}.example:7000"),
            };
            (id, node)
        })
        .collect();
    let membership = Membership::new(vec![nodes.keys().copied().collect()], nodes);
    let mut request = append_request(1, 0);
    request.entries.push(Entry {
        log_id: log_id(3, CLIENT_NODE, 2),
        payload: EntryPayload::Membership(membership),
    });
    let reason = expect_unreachable(network.append_entries(request, patient()).await);
    assert!(reason.contains("exceeds the limit"), "{reason}");
}

#[tokio::test]
async fn shutdown_stops_the_server_and_its_connections() {
    let server = TestServer::start(&[]).await;
    let address = server.address.clone();
    let transport = RaftTransport::new(CLIENT_NODE);
    let mut network = client(&transport, 1, &address).await;
    let request = vote_request(1, 1);
    let expected = expected_vote(1, &request);
    assert_eq!(
        network.vote(request, patient()).await.expect("answered"),
        expected
    );

    server.shut_down().await.expect("serve ends cleanly");
    expect_unreachable(network.vote(vote_request(1, 2), patient()).await);
}

#[tokio::test]
async fn a_pre_vote_carries_the_peers_answer_and_any_failure_counts_as_refused() {
    const HELD_SHARD: ShardId = 6;
    let server = TestServer::start(&[HELD_SHARD]).await;
    let transport = RaftTransport::new(CLIENT_NODE);
    let node = LedgerNode {
        raft_addr: server.address.clone(),
        http_addr: String::new(),
    };
    let ttl = Duration::from_secs(5);
    assert!(transport.pre_vote(4, SERVER_NODE, &node, ttl).await);
    assert!(!transport.pre_vote(5, SERVER_NODE, &node, ttl).await);
    assert!(
        !transport
            .pre_vote(UNKNOWN_SHARD, SERVER_NODE, &node, ttl)
            .await
    );
    assert!(
        !transport
            .pre_vote(STOPPED_SHARD, SERVER_NODE, &node, ttl)
            .await
    );
    // An answer that does not come in time is a refusal (the handler holds this shard).
    assert!(
        !transport
            .pre_vote(HELD_SHARD, SERVER_NODE, &node, Duration::from_millis(50))
            .await
    );
    let seen = server.requests_seen();
    transport.faults().block_peer(SERVER_NODE);
    assert!(!transport.pre_vote(4, SERVER_NODE, &node, ttl).await);
    assert_eq!(
        server.requests_seen(),
        seen,
        "nothing is sent to a blocked peer"
    );
}

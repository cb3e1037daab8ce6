//! The wire format: a connection opens with the [`handshake`] ([`PROTOCOL_PREAMBLE`] and the
//! dialing node's id; client to server only), then
//! carries frames, each a `u32` big-endian payload length followed by the payload, a
//! [`RequestFrame`] (client to server) or a [`ResponseFrame`] (server to client) encoded with
//! `bincode::serde` and `bincode::config::standard()`.
//!
//! **Invariant:** a frame's payload is at most the reader's `max_frame_bytes`. The length is
//! checked before the payload is buffered, so a peer cannot make us allocate more than that.

use bytes::{Buf, BytesMut};
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{HandlerError, TransportError};
use crate::types::{NodeId, ShardId, TypeConfig};

/// The first bytes a client writes on a new connection: the protocol name and its version.
/// bincode is not self-describing, so two builds that disagree on a message layout would
/// misread each other silently; the preamble makes a mismatch a clean refusal instead. Bump the
/// last byte on every incompatible change of the messages below (including openraft's types).
pub const PROTOCOL_PREAMBLE: [u8; 8] = *b"LDGRAFT\x03";

/// Bytes of the connection handshake: the preamble, then the dialing node's id (u64, big
/// endian). Naming the dialer lets the receiver log who connected, and lets a fault-injecting
/// proxy between nodes (the chaos harness's partitions) know which link a connection is.
pub const HANDSHAKE_BYTES: usize = PROTOCOL_PREAMBLE.len() + 8;

/// The handshake a node with id `dialer` opens every connection with.
pub fn handshake(dialer: NodeId) -> [u8; HANDSHAKE_BYTES] {
    let mut bytes = [0_u8; HANDSHAKE_BYTES];
    bytes[..PROTOCOL_PREAMBLE.len()].copy_from_slice(&PROTOCOL_PREAMBLE);
    bytes[PROTOCOL_PREAMBLE.len()..].copy_from_slice(&dialer.to_be_bytes());
    bytes
}

/// The default limit of a frame's payload. It bounds the memory one frame can take; an
/// append-entries request that would exceed it is split by openraft (`PayloadTooLarge`).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of the length prefix.
const FRAME_HEADER_BYTES: usize = 4;

/// How much the reader asks the socket for when its buffer is full: large enough that a stream
/// of small heartbeats costs few system calls.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A request for one shard's Raft group on the peer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestFrame {
    /// Chosen by the client, unique among its requests in flight on this connection; the
    /// response carries it back, which is what lets responses arrive in any order.
    pub request_id: u64,
    pub shard: ShardId,
    pub body: RequestBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RequestBody {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// "Would you vote for `candidate` now?", asked before a real election (see
    /// [`election_gate`](crate::election_gate)). Changes nothing on the receiver.
    PreVote {
        candidate: NodeId,
    },
}

/// The answer to the request with the same `request_id`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResponseFrame {
    pub request_id: u64,
    pub body: ResponseBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ResponseBody {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, HandlerError>),
    Vote(Result<VoteResponse<NodeId>, HandlerError>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, HandlerError<InstallSnapshotError>>),
    /// Whether the receiver would grant its vote: it has not heard from a leader of the shard
    /// for a while and is not its leader itself.
    PreVote(Result<bool, HandlerError>),
    /// The server handled the request but its answer could not be framed (it did not encode or
    /// was too large). Sent instead, so the caller fails now rather than at its timeout.
    ServerFailure {
        message: String,
    },
}

impl ResponseBody {
    /// A name for logs and errors.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ResponseBody::AppendEntries(_) => "AppendEntries",
            ResponseBody::Vote(_) => "Vote",
            ResponseBody::InstallSnapshot(_) => "InstallSnapshot",
            ResponseBody::PreVote(_) => "PreVote",
            ResponseBody::ServerFailure { .. } => "ServerFailure",
        }
    }
}

/// Encodes `message` as one frame, length prefix included, ready to be written.
pub(crate) fn encode_frame<T: Serialize>(
    message: &T,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut frame = vec![0_u8; FRAME_HEADER_BYTES];
    bincode::serde::encode_into_std_write(message, &mut frame, bincode::config::standard())
        .map_err(|source| TransportError::Encode { source })?;
    let payload_bytes = frame.len() - FRAME_HEADER_BYTES;
    let too_large = || TransportError::FrameTooLarge {
        length_bytes: payload_bytes as u64,
        limit_bytes: max_frame_bytes as u64,
    };
    if payload_bytes > max_frame_bytes {
        return Err(too_large());
    }
    let length = u32::try_from(payload_bytes).map_err(|_| too_large())?;
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

/// Decodes one frame's payload (without its length prefix). The whole payload must be the
/// message: leftover bytes mean the two sides disagree on the format.
pub(crate) fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    let (message, consumed_bytes): (T, usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(|source| TransportError::Decode { source })?;
    if consumed_bytes != payload.len() {
        return Err(TransportError::TrailingBytes {
            payload_bytes: payload.len(),
            trailing_bytes: payload.len() - consumed_bytes,
        });
    }
    Ok(message)
}

/// Reads the preamble and frames from a byte stream.
///
/// Both methods are cancel safe: all progress lives in `buffer`, and the only await point is one
/// `read_buf`, so the reader can sit in a `tokio::select!` next to other branches without losing
/// half a frame when another branch wins.
pub(crate) struct FrameReader<R> {
    reader: R,
    buffer: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(reader: R, max_frame_bytes: usize) -> Self {
        Self {
            reader,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            max_frame_bytes,
        }
    }

    /// Reads and checks the connection's handshake; returns the dialing node's id.
    pub(crate) async fn read_handshake(&mut self) -> Result<NodeId, TransportError> {
        while self.buffer.len() < HANDSHAKE_BYTES {
            if self.fill_buffer().await? == 0 {
                return Err(TransportError::BadPreamble {
                    received: self.buffer.to_vec(),
                });
            }
        }
        let received = self.buffer.split_to(HANDSHAKE_BYTES);
        let (preamble, dialer) = received.split_at(PROTOCOL_PREAMBLE.len());
        if preamble != PROTOCOL_PREAMBLE {
            return Err(TransportError::BadPreamble {
                received: preamble.to_vec(),
            });
        }
        let mut dialer_bytes = [0_u8; 8];
        dialer_bytes.copy_from_slice(dialer);
        Ok(NodeId::from_be_bytes(dialer_bytes))
    }

    /// The next frame's payload, or `None` when the peer closed the connection between frames.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<BytesMut>, TransportError> {
        loop {
            if let Some(header) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() {
                let payload_bytes = u32::from_be_bytes(*header) as usize;
                if payload_bytes > self.max_frame_bytes {
                    return Err(TransportError::FrameTooLarge {
                        length_bytes: payload_bytes as u64,
                        limit_bytes: self.max_frame_bytes as u64,
                    });
                }
                let frame_bytes = FRAME_HEADER_BYTES + payload_bytes;
                if self.buffer.len() >= frame_bytes {
                    self.buffer.advance(FRAME_HEADER_BYTES);
                    return Ok(Some(self.buffer.split_to(payload_bytes)));
                }
                // Make room for the rest of this frame in one allocation.
                self.buffer.reserve(frame_bytes - self.buffer.len());
            }
            if self.fill_buffer().await? == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(TransportError::TruncatedFrame {
                    buffered_bytes: self.buffer.len(),
                });
            }
        }
    }

    /// One read from the stream into the buffer; returns the bytes read (0 at end of stream).
    async fn fill_buffer(&mut self) -> Result<usize, TransportError> {
        if self.buffer.capacity() == self.buffer.len() {
            self.buffer.reserve(READ_CHUNK_BYTES);
        }
        self.reader
            .read_buf(&mut self.buffer)
            .await
            .map_err(|source| TransportError::Io { source })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use openraft::error::{Fatal, RaftError, SnapshotMismatch};
    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};
    use proptest::prelude::*;
    use tokio::io::ReadBuf;

    use super::*;

    const DIALER: NodeId = 7;
    use crate::types::{Entry, LedgerBatch, LedgerNode};

    fn sample_membership() -> Membership<NodeId, LedgerNode> {
        let voters = BTreeSet::from([1, 2, 3]);
        let nodes = (1..=3).map(|id| {
            (
                id,
                LedgerNode {
                    raft_addr: format!("127.0.0.1:71{id:02}"),
                    http_addr: format!("127.0.0.1:70{id:02}"),
                },
            )
        });
        Membership::new(
            vec![voters],
            nodes.collect::<std::collections::BTreeMap<_, _>>(),
        )
    }

    fn sample_requests() -> Vec<RequestFrame> {
        let append_entries = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(7, 2),
            prev_log_id: Some(log_id(6, 1, 41)),
            entries: vec![
                Entry {
                    log_id: log_id(7, 2, 42),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(7, 2, 43),
                    payload: EntryPayload::Normal(LedgerBatch {
                        timestamp_ms: 1_700_000_000_000,
                        commands: vec![ledger_core::Command::CreateAccount {
                            account_id: "acme".to_string(),
                            overdraft_limit: 5,
                        }]
                        .into(),
                    }),
                },
                Entry {
                    log_id: log_id(7, 2, 44),
                    payload: EntryPayload::Membership(sample_membership()),
                },
            ],
            leader_commit: Some(log_id(7, 2, 42)),
        };
        let vote = VoteRequest::new(Vote::new(9, 3), Some(log_id(8, 3, 100)));
        let install_snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(9, 3),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(8, 3, 100)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), sample_membership()),
                snapshot_id: "snapshot-100".to_string(),
            },
            offset: 4096,
            data: (0..=255).collect(),
            done: true,
        };
        vec![
            RequestFrame {
                request_id: 1,
                shard: 0,
                body: RequestBody::AppendEntries(append_entries),
            },
            RequestFrame {
                request_id: u64::MAX,
                shard: 15,
                body: RequestBody::Vote(vote),
            },
            RequestFrame {
                request_id: 3,
                shard: ShardId::MAX,
                body: RequestBody::InstallSnapshot(install_snapshot),
            },
            RequestFrame {
                request_id: 4,
                shard: 2,
                body: RequestBody::PreVote { candidate: 3 },
            },
        ]
    }

    fn sample_responses() -> Vec<ResponseFrame> {
        let snapshot_mismatch = SnapshotMismatch {
            expect: openraft::SnapshotSegmentId {
                id: "a".to_string(),
                offset: 0,
            },
            got: openraft::SnapshotSegmentId {
                id: "b".to_string(),
                offset: 10,
            },
        };
        vec![
            ResponseFrame {
                request_id: 1,
                body: ResponseBody::AppendEntries(Ok(AppendEntriesResponse::Success)),
            },
            ResponseFrame {
                request_id: 2,
                body: ResponseBody::AppendEntries(Ok(AppendEntriesResponse::HigherVote(
                    Vote::new(10, 1),
                ))),
            },
            ResponseFrame {
                request_id: 3,
                body: ResponseBody::Vote(Ok(VoteResponse::new(
                    Vote::new(9, 3),
                    Some(log_id(8, 3, 100)),
                    true,
                ))),
            },
            ResponseFrame {
                request_id: 4,
                body: ResponseBody::Vote(Err(HandlerError::Raft(RaftError::Fatal(Fatal::Stopped)))),
            },
            ResponseFrame {
                request_id: 5,
                body: ResponseBody::InstallSnapshot(Ok(InstallSnapshotResponse {
                    vote: Vote::new_committed(9, 3),
                })),
            },
            ResponseFrame {
                request_id: 6,
                body: ResponseBody::InstallSnapshot(Err(HandlerError::Raft(RaftError::APIError(
                    InstallSnapshotError::SnapshotMismatch(snapshot_mismatch),
                )))),
            },
            ResponseFrame {
                request_id: 7,
                body: ResponseBody::AppendEntries(Err(HandlerError::UnknownShard { shard: 12 })),
            },
            ResponseFrame {
                request_id: 11,
                body: ResponseBody::PreVote(Ok(true)),
            },
            ResponseFrame {
                request_id: 12,
                body: ResponseBody::PreVote(Err(HandlerError::UnknownShard { shard: 3 })),
            },
            ResponseFrame {
                request_id: 8,
                body: ResponseBody::ServerFailure {
                    message: "boom".to_string(),
                },
            },
        ]
    }

    /// Neither openraft's requests nor the response bodies implement `PartialEq` throughout, but
    /// all implement `Debug` over every field: equal debug renderings mean equal messages.
    fn assert_same<T: std::fmt::Debug>(decoded: &T, original: &T) {
        assert_eq!(format!("{decoded:?}"), format!("{original:?}"));
    }

    fn payload_of(frame: &[u8]) -> &[u8] {
        let length = u32::from_be_bytes(frame[..4].try_into().expect("a 4-byte header"));
        assert_eq!(
            length as usize,
            frame.len() - 4,
            "the prefix is the payload length"
        );
        &frame[4..]
    }

    #[test]
    fn every_request_and_response_kind_round_trips() {
        for request in sample_requests() {
            let frame = encode_frame(&request, MAX_FRAME_BYTES).expect("encodes");
            let decoded: RequestFrame = decode_payload(payload_of(&frame)).expect("decodes");
            assert_same(&decoded, &request);
        }
        for response in sample_responses() {
            let frame = encode_frame(&response, MAX_FRAME_BYTES).expect("encodes");
            let decoded: ResponseFrame = decode_payload(payload_of(&frame)).expect("decodes");
            assert_same(&decoded, &response);
        }
    }

    #[test]
    fn a_message_larger_than_the_limit_is_refused_at_encoding() {
        let request = &sample_requests()[2];
        let unlimited = encode_frame(request, MAX_FRAME_BYTES).expect("encodes");
        let payload_bytes = unlimited.len() - 4;
        let error = encode_frame(request, payload_bytes - 1).expect_err("one byte over the limit");
        assert!(matches!(
            error,
            TransportError::FrameTooLarge { length_bytes, limit_bytes }
                if length_bytes == payload_bytes as u64 && limit_bytes == payload_bytes as u64 - 1
        ));
        encode_frame(request, payload_bytes).expect("exactly at the limit is fine");
    }

    #[test]
    fn trailing_bytes_and_garbage_are_decode_errors() {
        let frame = encode_frame(&sample_responses()[0], MAX_FRAME_BYTES).expect("encodes");
        let mut padded = payload_of(&frame).to_vec();
        padded.push(0);
        assert!(matches!(
            decode_payload::<ResponseFrame>(&padded),
            Err(TransportError::TrailingBytes {
                trailing_bytes: 1,
                ..
            })
        ));
        // A variant index far past the last variant of `RequestBody`.
        let garbage = [1_u8, 0, 200, 200, 200];
        assert!(matches!(
            decode_payload::<RequestFrame>(&garbage),
            Err(TransportError::Decode { .. })
        ));
    }

    /// A stream that hands out its bytes in the given chunk sizes (cycling), so frames arrive
    /// split at arbitrary points, as TCP may deliver them.
    struct ChunkedStream {
        bytes: Vec<u8>,
        position: usize,
        chunk_sizes: Vec<usize>,
        next_chunk: usize,
    }

    impl AsyncRead for ChunkedStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _context: &mut Context<'_>,
            buffer: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let chunk = self.chunk_sizes[self.next_chunk % self.chunk_sizes.len()];
            self.next_chunk += 1;
            let available = self.bytes.len() - self.position;
            let count = chunk.min(available).min(buffer.remaining());
            let start = self.position;
            buffer.put_slice(&self.bytes[start..start + count]);
            self.position += count;
            Poll::Ready(Ok(()))
        }
    }

    fn read_all_frames(
        stream: ChunkedStream,
        max_frame_bytes: usize,
    ) -> Result<Vec<BytesMut>, TransportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let mut reader = FrameReader::new(stream, max_frame_bytes);
            reader.read_handshake().await?;
            let mut frames = Vec::new();
            while let Some(frame) = reader.next_frame().await? {
                frames.push(frame);
            }
            Ok(frames)
        })
    }

    proptest! {
        /// Any sequence of frames, delivered in any chunking, reads back as the same payloads.
        #[test]
        fn frames_survive_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            chunk_sizes in proptest::collection::vec(1_usize..64, 1..8),
        ) {
            let mut bytes = handshake(DIALER).to_vec();
            for payload in &payloads {
                bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                bytes.extend_from_slice(payload);
            }
            let stream = ChunkedStream { bytes, position: 0, chunk_sizes, next_chunk: 0 };
            let frames = read_all_frames(stream, 300).expect("well-formed stream");
            let frames: Vec<Vec<u8>> = frames.into_iter().map(|frame| frame.to_vec()).collect();
            prop_assert_eq!(frames, payloads);
        }

        /// A stream cut anywhere inside a frame is a truncation error, never a short frame.
        #[test]
        fn a_stream_cut_inside_a_frame_is_truncated(
            payload in proptest::collection::vec(any::<u8>(), 1..300),
            cut_seed in any::<usize>(),
        ) {
            let mut bytes = handshake(DIALER).to_vec();
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&payload);
            let frame_bytes = 4 + payload.len();
            let keep = HANDSHAKE_BYTES + 1 + cut_seed % (frame_bytes - 1);
            bytes.truncate(keep);
            let stream = ChunkedStream { bytes, position: 0, chunk_sizes: vec![7], next_chunk: 0 };
            let truncated = matches!(
                read_all_frames(stream, 300),
                Err(TransportError::TruncatedFrame { .. })
            );
            prop_assert!(truncated);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_payload_arrives() {
        let mut bytes = handshake(DIALER).to_vec();
        bytes.extend_from_slice(&101_u32.to_be_bytes());
        let stream = ChunkedStream {
            bytes,
            position: 0,
            chunk_sizes: vec![64],
            next_chunk: 0,
        };
        assert!(matches!(
            read_all_frames(stream, 100),
            Err(TransportError::FrameTooLarge {
                length_bytes: 101,
                limit_bytes: 100
            })
        ));
    }

    #[test]
    fn the_handshake_names_the_dialer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let bytes = handshake(u64::MAX - 3).to_vec();
        let dialer = runtime.block_on(async move {
            let stream = ChunkedStream {
                bytes,
                position: 0,
                chunk_sizes: vec![5],
                next_chunk: 0,
            };
            FrameReader::new(stream, 100).read_handshake().await
        });
        assert_eq!(dialer.expect("a well-formed handshake"), u64::MAX - 3);
    }

    #[test]
    fn a_wrong_preamble_is_refused() {
        let stream = ChunkedStream {
            bytes: b"GET / HTTP/1.1\r\n".to_vec(),
            position: 0,
            chunk_sizes: vec![3],
            next_chunk: 0,
        };
        assert!(matches!(
            read_all_frames(stream, 100),
            Err(TransportError::BadPreamble { received }) if received == b"GET / HT"
        ));
    }
}

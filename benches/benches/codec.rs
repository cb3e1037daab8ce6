//! Encoding and decoding of one Raft log entry carrying a batch of ledger commands, exactly as
//! the RocksDB log store stores it: the whole `openraft::Entry<TypeConfig>` through
//! `bincode::serde` with `bincode::config::standard()` (`crates/ledger-storage/src/codec.rs`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ledger_core::{Charge, Command};
use ledger_raft::{Entry, LedgerBatch, TypeConfig};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn entry(commands: usize) -> Entry {
    let batch = LedgerBatch {
        timestamp_ms: 1_700_000_000_000,
        commands: (0..commands)
            .map(|index| Command::Debit {
                account_id: format!("loadgen-{}", index * 7_919 % 100_000),
                idempotency_key: format!("lg1732512345678-{}-{index}", index % 64),
                charge: Charge::Credits(1),
            })
            .collect(),
    };
    openraft::Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), 123_456),
        payload: EntryPayload::Normal(batch),
    }
}

fn codec(criterion: &mut Criterion) {
    let config = bincode::config::standard();
    let mut group = criterion.benchmark_group("log_entry");
    group.sample_size(30);
    for commands in [1usize, 100, 1_000] {
        let entry = entry(commands);
        let bytes = bincode::serde::encode_to_vec(&entry, config).expect("encodable");
        let (decoded, _): (Entry, usize) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodable");
        assert_eq!(decoded.log_id, entry.log_id, "the entry must round-trip");
        group.throughput(Throughput::Elements(commands as u64));
        group.bench_with_input(
            BenchmarkId::new("encode", commands),
            &entry,
            |bencher, entry| {
                bencher.iter(|| bincode::serde::encode_to_vec(entry, config).expect("encodable"))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decode", commands),
            &bytes,
            |bencher, bytes| {
                bencher.iter(|| {
                    let (entry, length): (Entry, usize) =
                        bincode::serde::decode_from_slice(bytes, config).expect("decodable");
                    (entry, length)
                })
            },
        );
        println!("log_entry/{commands}: {} bytes encoded", bytes.len());
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

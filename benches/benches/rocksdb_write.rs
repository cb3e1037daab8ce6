//! RocksDB `WriteBatch` writes as the ledger's storage makes them, with and without a WAL sync:
//! the gap between the two is what group commit exists to share. A batch holds `puts` values of
//! 100 bytes (about one encoded debit command each), in a fresh database in a temporary
//! directory on the same disk as the target directory (not tmpfs, so that sync means fsync).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

fn rocksdb_write(criterion: &mut Criterion) {
    // Next to the build output rather than in /tmp, which may be a memory file system.
    let parent = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let directory = tempfile::tempdir_in(parent).expect("temporary directory");
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = DB::open(&options, directory.path()).expect("open RocksDB");
    let value = [0x5au8; 100];
    let mut key_sequence = 0u64;
    let mut group = criterion.benchmark_group("rocksdb_write_batch");
    group.sample_size(20);
    for sync in [false, true] {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        for puts in [1u64, 100, 1_000] {
            group.throughput(Throughput::Elements(puts));
            let name = if sync { "sync" } else { "no_sync" };
            group.bench_function(BenchmarkId::new(name, puts), |bencher| {
                bencher.iter(|| {
                    let mut batch = WriteBatch::default();
                    for _ in 0..puts {
                        key_sequence += 1;
                        batch.put(key_sequence.to_be_bytes(), value);
                    }
                    db.write_opt(batch, &write_options).expect("write");
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, rocksdb_write);
criterion_main!(benches);

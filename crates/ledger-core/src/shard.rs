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

    /// (account id, XXH3-64 with seed 0, shard of 16, shard of 3). The hashes were computed with
    /// the reference C implementation (libxxhash 0.8.1, `XXH3_64bits`), not with this crate, and
    /// the ids cover each of XXH3's input length classes up to the longest identifier. If this
    /// test fails, existing clusters would look for their accounts on the wrong shard: the
    /// placement function must never change.
    const PINNED: [(&str, u64, u32, u32); 10] = [
        ("", 0x2d06800538d394c2, 2, 1),
        ("a", 0xe6c632b61e964e1f, 15, 1),
        ("bob", 0x1403c0c40f49b8e5, 5, 0),
        ("alice", 0x4da10dd61a0116b0, 0, 0),
        ("acct-0001", 0x718442c035f0150e, 14, 0),
        ("customer:42", 0x6757f5baa9c31da2, 2, 0),
        ("org_7f3a.team-9", 0x97a8432c8c70d878, 8, 1),
        ("tenant-0042:user-00000017", 0x49dfb88efa62cdee, 14, 0),
        (
            "workspace.9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
            0xc30541b49aae2dc5,
            5,
            1,
        ),
        (LONGEST_ID, 0x4ca37e83f6cddd17, 7, 0),
    ];

    /// 128 bytes, `IDENTIFIER_LENGTH_MAX`.
    const LONGEST_ID: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                              xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

    #[test]
    fn placement_is_pinned() {
        assert_eq!(LONGEST_ID.len(), crate::IDENTIFIER_LENGTH_MAX);
        for (account_id, hash, shard_of_16, shard_of_3) in PINNED {
            assert_eq!(
                xxh3_64(account_id.as_bytes()),
                hash,
                "hash of {account_id:?}"
            );
            assert_eq!(
                shard_for_account(account_id, 16),
                shard_of_16,
                "shard of {account_id:?} among 16"
            );
            assert_eq!(
                shard_for_account(account_id, 3),
                shard_of_3,
                "shard of {account_id:?} among 3"
            );
            assert_eq!(shard_for_account(account_id, 1), 0);
        }
    }

    /// Sequential ids (the common case: `acct-1`, `acct-2`, ...) spread evenly. The ids are
    /// fixed, so this is deterministic; the bound (25% off the mean) is far outside what a
    /// uniform hash gives for 1600 ids per shard (a standard deviation of about 40).
    #[test]
    fn placement_spreads_sequential_ids_evenly() {
        for shard_count in [3_u32, 7, 16, 64] {
            let ids_per_shard = 1_600_u32;
            let mut counts = vec![0_u32; shard_count as usize];
            for index in 0..ids_per_shard * shard_count {
                let shard = shard_for_account(&format!("acct-{index}"), shard_count);
                assert!(shard < shard_count);
                counts[shard as usize] += 1;
            }
            let (low, high) = (ids_per_shard * 3 / 4, ids_per_shard * 5 / 4);
            for (shard, count) in counts.iter().enumerate() {
                assert!(
                    (low..=high).contains(count),
                    "{shard_count} shards: shard {shard} holds {count} ids, expected {low}..={high}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "shard_count must be positive")]
    fn zero_shards_is_refused() {
        shard_for_account("alice", 0);
    }
}

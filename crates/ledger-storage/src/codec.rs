//! Value encoding: bincode 2 (standard config) over serde, the one format of everything stored.

use ledger_raft::ShardId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StorageError;

pub(crate) fn encode<T: Serialize>(
    value: &T,
    what: &'static str,
    shard: ShardId,
) -> Result<Vec<u8>, StorageError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|source| {
        StorageError::Encode {
            what,
            shard,
            source,
        }
    })
}

/// Decodes a whole value; trailing bytes mean the value is not what the key says it is.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    shard: ShardId,
) -> Result<T, StorageError> {
    let (value, read_length) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(
            |source| StorageError::Decode {
                what,
                shard,
                source,
            },
        )?;
    if read_length != bytes.len() {
        return Err(StorageError::Corrupt {
            what,
            shard,
            detail: format!(
                "{} trailing bytes after the encoded value",
                bytes.len() - read_length
            ),
        });
    }
    Ok(value)
}

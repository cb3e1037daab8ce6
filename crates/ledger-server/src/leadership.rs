//! Shard leadership: handing it to a chosen replica (an operator's `transfer-leader`, a move that
//! takes the leader's replica away) and the balancer that spreads leaders over the nodes.
//!
//! The hand-over itself is `ledger_raft::transfer`; this module reaches the target node over
//! HTTP (`POST /internal/shards/{s}/campaign`) and gathers who leads what
//! (`GET /internal/leaders`). What to hand over is planned by the pure
//! `ledger_core::cluster::next_leader_transfer`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use ledger_core::cluster::{next_leader_transfer, ClusterMap, META_SHARD};
use ledger_raft::transfer::{transfer_leadership, TransferError, TransferSettings};
use ledger_raft::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

use crate::node::{NodeContext, ShardReplica};

/// The balancer looks at leaders every this many rounds of the cluster loop (2 s).
pub(crate) const BALANCE_EVERY_ROUNDS: usize = 8;
/// Most time to ask a node something.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of `POST /internal/shards/{s}/campaign`: the leader that hands over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRequest {
    pub leader: NodeId,
}

/// The answer of `GET /internal/leaders`: the shards (metadata group included) this node leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadersAnswer {
    pub node_id: NodeId,
    pub shards: Vec<ShardId>,
}

/// On `replica`'s leader (this node): hands leadership of its shard to the voter `to`.
pub(crate) async fn transfer_here(
    context: &NodeContext,
    replica: &ShardReplica,
    to: NodeId,
) -> Result<(), TransferError> {
    let settings = TransferSettings::from_timing(&context.timing());
    let shard = replica.shard;
    transfer_leadership(&replica.raft, Some(&replica.proposer), to, settings, || {
        ask_to_campaign(context, shard, to)
    })
    .await
}

async fn ask_to_campaign(context: &NodeContext, shard: ShardId, to: NodeId) -> Result<(), String> {
    let address = context
        .http_addr_of(to)
        .ok_or_else(|| format!("no address for node {to}"))?;
    let answer = context
        .forwarder
        .post(format!("http://{address}/internal/shards/{shard}/campaign"))
        .timeout(ASK_TIMEOUT)
        .json(&CampaignRequest {
            leader: context.node_id(),
        })
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if answer.status().is_success() {
        return Ok(());
    }
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    Err(format!(
        "{status}: {}",
        body.chars().take(300).collect::<String>()
    ))
}

/// The shards this node leads now.
pub(crate) fn led_here(context: &NodeContext) -> Vec<ShardId> {
    let me = context.node_id();
    context
        .replicas
        .all()
        .into_iter()
        .filter(|replica| replica.current_leader() == Some(me))
        .map(|replica| replica.shard)
        .collect()
}

/// The leader of every shard, as the leaders themselves report it (each node answers for the
/// shards it leads); a shard that no reachable node leads is missing.
async fn gather_leaders(context: &NodeContext, map: &ClusterMap) -> BTreeMap<u32, NodeId> {
    let me = context.node_id();
    let mut leaders: BTreeMap<u32, NodeId> = led_here(context)
        .into_iter()
        .map(|shard| (shard, me))
        .collect();
    let asks = map
        .nodes
        .keys()
        .filter(|node| **node != me && !map.removed.contains(node))
        .filter_map(|node| context.http_addr_of(*node))
        .map(|address| async move {
            let answer = context
                .forwarder
                .get(format!("http://{address}/internal/leaders"))
                .timeout(ASK_TIMEOUT)
                .send()
                .await
                .ok()?;
            answer.json::<LeadersAnswer>().await.ok()
        });
    for answer in join_all(asks).await.into_iter().flatten() {
        for shard in answer.shards {
            leaders.insert(shard, answer.node_id);
        }
    }
    leaders
}

/// The controller's balancer (on the metadata leader, with no replica to move): one hand-over
/// when a node leads two or more shards more than another replica of one of them. Returns
/// whether leadership moved.
pub(crate) async fn balance(context: &NodeContext, map: &ClusterMap) -> bool {
    let round = context.cluster.rounds.load(Ordering::Relaxed);
    if !round.is_multiple_of(BALANCE_EVERY_ROUNDS) {
        return false;
    }
    let mut leaders = gather_leaders(context, map).await;
    leaders.remove(&META_SHARD);
    let Some(transfer) = next_leader_transfer(map, &leaders) else {
        return false;
    };
    tracing::info!(?transfer, "balancing leaders");
    match crate::http::shard_transfer_leader(context, transfer.shard, transfer.to).await {
        Ok(()) => true,
        Err(message) => {
            tracing::info!(?transfer, %message, "leader hand-over not done");
            false
        }
    }
}

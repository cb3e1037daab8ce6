//! The account actor and the registry that creates, finds and forgets account actors.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use ledger_core::{Command, Outcome};
use ledger_raft::proposer::{ProposeError, ProposerHandle};
use parking_lot::Mutex;

use crate::runtime::ActorRuntime;

/// Why a submitted command has no decided outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The account already has `in_flight_per_account_max` commands in flight (HTTP 429).
    #[error("account {account_id}: too many commands in flight")]
    Overloaded { account_id: String },
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The actor system is shutting down.
    #[error("actor system stopped")]
    Stopped,
}

/// Bounds of the actor layer.
#[derive(Clone, Copy, Debug)]
pub struct ActorLimits {
    /// Most commands of one account proposed and not yet decided.
    pub in_flight_per_account_max: usize,
    /// An actor with nothing in flight for this long stops and is forgotten.
    pub idle_timeout: Duration,
}

impl Default for ActorLimits {
    fn default() -> Self {
        ActorLimits {
            in_flight_per_account_max: 10_000,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Registry stripes: accounts are spread over independently locked maps so that submitting to
/// different accounts does not contend on one lock.
const STRIPE_COUNT: usize = 64;

/// Each live actor with the proposer it feeds.
type Stripe = Mutex<HashMap<String, (Addr<AccountActor>, ProposerHandle)>>;

struct Registry {
    stripes: Vec<Stripe>,
}

impl Registry {
    fn stripe(&self, account_id: &str) -> &Stripe {
        &self.stripes[bucket(account_id, STRIPE_COUNT)]
    }

    /// Forgets `account_id` if it still maps to `address` (a newer actor may have replaced it).
    fn forget(&self, account_id: &str, address: &Addr<AccountActor>) {
        let mut stripe = self.stripe(account_id).lock();
        if stripe
            .get(account_id)
            .is_some_and(|(known, _)| known == address)
        {
            stripe.remove(account_id);
        }
    }
}

/// The account actors of a node. Cheap to clone, `Send`, usable from any tokio task.
#[derive(Clone)]
pub struct AccountActors {
    registry: Arc<Registry>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    limits: ActorLimits,
}

impl AccountActors {
    pub fn new(runtime: &ActorRuntime, limits: ActorLimits) -> AccountActors {
        AccountActors {
            registry: Arc::new(Registry {
                stripes: (0..STRIPE_COUNT)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
            }),
            arbiters: Arc::new(runtime.arbiters().to_vec()),
            limits,
        }
    }

    /// Number of live account actors (for metrics and tests).
    pub fn active_count(&self) -> usize {
        self.registry
            .stripes
            .iter()
            .map(|stripe| stripe.lock().len())
            .sum()
    }

    /// Submits `command` to its account's actor (created on demand) and waits for the decided
    /// outcome. `proposer` is the proposer of the account's shard. A shard-level command (no
    /// account: catalog, tick, event acknowledgement) has no ordering to keep per account and
    /// goes to the proposer directly.
    pub async fn submit(
        &self,
        proposer: &ProposerHandle,
        command: Command,
    ) -> Result<Outcome, SubmitError> {
        let Some(account_id) = command.account_id().map(str::to_owned) else {
            return Ok(proposer.propose_and_wait(command).await?);
        };
        // An actor that just stopped for idleness may still be in the registry for an instant;
        // its mailbox is then closed and the command was not proposed, so trying again with a
        // fresh actor is safe.
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let address = self.actor_for(&account_id, proposer);
            match address
                .send(Submit {
                    command: command.clone(),
                })
                .await
            {
                Ok(result) => return result,
                Err(MailboxError::Closed) => {
                    self.registry.forget(&account_id, &address);
                }
                Err(MailboxError::Timeout) => return Err(SubmitError::Stopped),
            }
        }
        Err(SubmitError::Stopped)
    }

    fn actor_for(&self, account_id: &str, proposer: &ProposerHandle) -> Addr<AccountActor> {
        let mut stripe = self.registry.stripe(account_id).lock();
        if let Some((address, actor_proposer)) = stripe.get(account_id) {
            // An account never changes shard, but this node's replica of the shard can be
            // dropped and opened again (replicas move), with a new proposer: an actor feeding
            // the old one is replaced (it finishes what it has in flight, then idles out).
            if address.connected() && actor_proposer.same_proposer(proposer) {
                return address.clone();
            }
        }
        let arbiter = &self.arbiters[bucket(account_id, self.arbiters.len())];
        let actor = AccountActor {
            account_id: account_id.to_owned(),
            proposer: proposer.clone(),
            limits: self.limits,
            in_flight: 0,
            last_activity: Instant::now(),
            registry: self.registry.clone(),
        };
        let address = AccountActor::start_in_arbiter(arbiter, move |_| actor);
        stripe.insert(account_id.to_owned(), (address.clone(), proposer.clone()));
        address
    }
}

fn bucket(account_id: &str, buckets: usize) -> usize {
    // In-memory spreading only (nothing persistent depends on it), so std's fixed-key
    // `DefaultHasher::new()` is fine here.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    account_id.hash(&mut hasher);
    (hasher.finish() % buckets.max(1) as u64) as usize
}

struct AccountActor {
    account_id: String,
    proposer: ProposerHandle,
    limits: ActorLimits,
    in_flight: usize,
    last_activity: Instant,
    registry: Arc<Registry>,
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Admission is bounded by `in_flight`, not by the mailbox: handling a message only
        // queues a proposal, so the mailbox drains as fast as messages arrive.
        context.set_mailbox_capacity(usize::MAX);
        let check_every = (self.limits.idle_timeout / 2).max(Duration::from_millis(10));
        context.run_interval(check_every, |actor, context| {
            if actor.in_flight == 0 && actor.last_activity.elapsed() >= actor.limits.idle_timeout {
                actor.registry.forget(&actor.account_id, &context.address());
                context.stop();
            }
        });
    }
}

struct Submit {
    command: Command,
}

impl Message for Submit {
    type Result = Result<Outcome, SubmitError>;
}

impl Handler<Submit> for AccountActor {
    type Result = ResponseActFuture<Self, Result<Outcome, SubmitError>>;

    fn handle(&mut self, message: Submit, _context: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        if self.in_flight >= self.limits.in_flight_per_account_max {
            let error = SubmitError::Overloaded {
                account_id: self.account_id.clone(),
            };
            return Box::pin(actix::fut::ready(Err(error)));
        }
        let receiver = match self.proposer.propose(message.command) {
            Ok(receiver) => receiver,
            Err(error) => return Box::pin(actix::fut::ready(Err(error.into()))),
        };
        self.in_flight += 1;
        let shard = self.proposer.shard();
        // Not `AtomicResponse`: the mailbox keeps flowing while this command is in flight, which
        // is what pipelines an account's commands.
        Box::pin(
            async move {
                receiver
                    .await
                    .unwrap_or(Err(ProposeError::OutcomeUnknown { shard }))
            }
            .into_actor(self)
            .map(|result, actor, _context| {
                actor.in_flight -= 1;
                actor.last_activity = Instant::now();
                result.map_err(SubmitError::from)
            }),
        )
    }
}

//! The account actor and the registry that creates, finds and forgets account actors.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use ledger_core::{Command, Outcome};
use ledger_raft::proposer::{OutcomeReceiver, ProposeError, ProposerHandle};
use parking_lot::Mutex;
use tokio::sync::oneshot;

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
    ///
    /// The actor admits the command and proposes it, in the order of its mailbox, then hands
    /// back the outcome's receiver: the outcome comes straight from the proposer to the caller,
    /// without a second pass through the actor's thread.
    pub async fn submit(
        &self,
        proposer: &ProposerHandle,
        command: Command,
    ) -> Result<Outcome, SubmitError> {
        let Some(account_id) = command.account_id().map(str::to_owned) else {
            return Ok(proposer.propose_and_wait(command).await?);
        };
        // An actor that just stopped for idleness may still be in the registry for an instant;
        // its mailbox then refuses the message, or drops it unhandled, and either way the
        // command comes back unproposed: trying again with a fresh actor is safe.
        const ATTEMPTS: usize = 3;
        let mut command = command;
        for _ in 0..ATTEMPTS {
            let address = self.actor_for(&account_id, proposer);
            let (reply, admission) = oneshot::channel();
            let message = Submit {
                command: Some(command),
                reply: Some(reply),
            };
            command = match address.try_send(message) {
                Ok(()) => match admission.await {
                    Ok(Admission::Proposed { outcome, in_flight }) => {
                        let result = outcome.await.unwrap_or(Err(ProposeError::OutcomeUnknown {
                            shard: proposer.shard(),
                        }));
                        drop(in_flight);
                        return result.map_err(SubmitError::from);
                    }
                    Ok(Admission::Refused(error)) => return Err(error),
                    Ok(Admission::Returned(command)) => command,
                    // `Submit` answers when dropped, so its reply cannot vanish unanswered.
                    Err(_) => return Err(SubmitError::Stopped),
                },
                Err(SendError::Closed(mut message)) => match message.take_command() {
                    Some(command) => command,
                    None => return Err(SubmitError::Stopped),
                },
                // The mailbox is unbounded (see `actor_for`); should it ever be full, the account
                // has more queued than any client should send it.
                Err(SendError::Full(_)) => {
                    return Err(SubmitError::Overloaded {
                        account_id: account_id.clone(),
                    })
                }
            };
            self.registry.forget(&account_id, &address);
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
            in_flight: Arc::new(AtomicUsize::new(0)),
            last_activity: Instant::now(),
            registry: self.registry.clone(),
        };
        let address = AccountActor::start_in_arbiter(arbiter, move |context| {
            // Admission is bounded by `in_flight`, not by the mailbox: handling a message only
            // queues a proposal, so the mailbox drains as fast as messages arrive. Set before
            // the first message can arrive, so that `try_send` never finds it full.
            context.set_mailbox_capacity(usize::MAX);
            actor
        });
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
    /// Commands proposed and not yet decided (or whose caller gave up): one [`InFlight`] each.
    in_flight: Arc<AtomicUsize>,
    last_activity: Instant,
    registry: Arc<Registry>,
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let check_every = (self.limits.idle_timeout / 2).max(Duration::from_millis(10));
        context.run_interval(check_every, |actor, context| {
            if actor.in_flight.load(Ordering::Acquire) == 0
                && actor.last_activity.elapsed() >= actor.limits.idle_timeout
            {
                actor.registry.forget(&actor.account_id, &context.address());
                context.stop();
            }
        });
    }
}

/// One command proposed for its account and not yet decided; counted in the actor's bound until
/// the caller has the outcome (or gives up waiting).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The actor's answer to a [`Submit`].
enum Admission {
    /// Proposed: the outcome will arrive on `outcome`.
    Proposed {
        outcome: OutcomeReceiver,
        in_flight: InFlight,
    },
    /// Not proposed, for this reason.
    Refused(SubmitError),
    /// Not handled: the actor stopped with the message in its mailbox.
    Returned(Command),
}

struct Submit {
    /// Both `Some` until the actor handles the message.
    command: Option<Command>,
    reply: Option<oneshot::Sender<Admission>>,
}

impl Submit {
    fn take_command(&mut self) -> Option<Command> {
        self.reply = None;
        self.command.take()
    }
}

impl Drop for Submit {
    /// A message dropped unhandled (its actor stopped) hands its command back to the caller.
    fn drop(&mut self) {
        if let (Some(command), Some(reply)) = (self.command.take(), self.reply.take()) {
            let _ = reply.send(Admission::Returned(command));
        }
    }
}

impl Message for Submit {
    type Result = ();
}

impl Handler<Submit> for AccountActor {
    type Result = ();

    fn handle(&mut self, mut message: Submit, _context: &mut Self::Context) {
        self.last_activity = Instant::now();
        let (Some(command), Some(reply)) = (message.command.take(), message.reply.take()) else {
            return;
        };
        let admission =
            if self.in_flight.load(Ordering::Acquire) >= self.limits.in_flight_per_account_max {
                Admission::Refused(SubmitError::Overloaded {
                    account_id: self.account_id.clone(),
                })
            } else {
                // Proposed in mailbox order: the order in which the state machine applies them.
                match self.proposer.propose(command) {
                    Ok(outcome) => Admission::Proposed {
                        outcome,
                        in_flight: InFlight::new(&self.in_flight),
                    },
                    Err(error) => Admission::Refused(error.into()),
                }
            };
        // A caller that stopped waiting drops the admission, and with it the in-flight count;
        // a proposed command is decided all the same.
        let _ = reply.send(admission);
    }
}

#[cfg(test)]
mod tests {
    use ledger_core::Charge;

    use super::*;

    fn debit() -> Command {
        Command::Debit {
            account_id: "account-a".to_owned(),
            idempotency_key: "key-1".to_owned(),
            charge: Charge::Credits(1),
        }
    }

    #[test]
    fn a_message_dropped_unhandled_returns_its_command() {
        let (reply, mut admission) = oneshot::channel();
        drop(Submit {
            command: Some(debit()),
            reply: Some(reply),
        });
        match admission.try_recv() {
            Ok(Admission::Returned(command)) => assert_eq!(command, debit()),
            _ => panic!("the command must come back"),
        }
    }

    #[test]
    fn a_message_refused_by_the_mailbox_gives_its_command_back_without_an_answer() {
        let (reply, mut admission) = oneshot::channel();
        let mut message = Submit {
            command: Some(debit()),
            reply: Some(reply),
        };
        assert_eq!(message.take_command(), Some(debit()));
        drop(message);
        assert!(
            admission.try_recv().is_err(),
            "the caller already has the command back"
        );
    }

    #[test]
    fn the_in_flight_count_follows_its_guards() {
        let counter = Arc::new(AtomicUsize::new(0));
        let first = InFlight::new(&counter);
        let second = InFlight::new(&counter);
        assert_eq!(counter.load(Ordering::Acquire), 2);
        drop(first);
        assert_eq!(counter.load(Ordering::Acquire), 1);
        drop(second);
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }
}

//! The account actors against a manual proposer (no Raft): ordering, pipelining, admission bounds,
//! error propagation and idle eviction.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use ledger_actors::{AccountActors, ActorLimits, ActorRuntime, SubmitError};
use ledger_core::{Accepted, Charge, Command, Outcome};
use ledger_raft::proposer::{manual_proposer, ProposeError, ProposerHandle};

fn debit(account_id: &str, key: usize) -> Command {
    Command::Debit {
        account_id: account_id.to_owned(),
        idempotency_key: format!("key-{key}"),
        charge: Charge::Credits(key as u64 + 1),
    }
}

fn accepted(amount: u64) -> Outcome {
    Outcome {
        result: Ok(Accepted::Debited {
            amount,
            available: 0,
            rate_card_version: None,
        }),
        replayed: false,
    }
}

type Submission = Pin<Box<dyn Future<Output = Result<Outcome, SubmitError>> + Send>>;

/// A submission of `command` through `actors`, not started yet.
fn submission(actors: &AccountActors, proposer: &ProposerHandle, command: Command) -> Submission {
    let actors = actors.clone();
    let proposer = proposer.clone();
    Box::pin(async move { actors.submit(&proposer, command).await })
}

/// Polls each submission once, in order: that hands each command to its actor's mailbox in this
/// order without waiting for any outcome.
async fn start_in_order(submissions: &mut [Submission]) {
    for submission in submissions.iter_mut() {
        let first_poll = futures::poll!(submission.as_mut());
        assert!(
            matches!(first_poll, Poll::Pending),
            "nothing is decided yet"
        );
    }
}

fn limits(in_flight_per_account_max: usize, idle_timeout: Duration) -> ActorLimits {
    ActorLimits {
        in_flight_per_account_max,
        idle_timeout,
    }
}

#[tokio::test]
async fn commands_of_an_account_are_proposed_in_order_and_pipelined() {
    let runtime = ActorRuntime::start(2).expect("actor runtime starts");
    let actors = AccountActors::new(&runtime, limits(1_000, Duration::from_secs(60)));
    let (proposer, mut proposals) = manual_proposer(0, 1_000);
    let count = 50;
    let mut submissions: Vec<Submission> = (0..count)
        .map(|key| {
            let actors = actors.clone();
            let proposer = proposer.clone();
            Box::pin(async move { actors.submit(&proposer, debit("alice", key)).await })
                as Submission
        })
        .collect();
    start_in_order(&mut submissions).await;

    // All commands reach the proposer before any is answered (pipelining), in submission order.
    let mut pending = Vec::new();
    for key in 0..count {
        let proposal = proposals.next().await.expect("proposer is alive");
        assert_eq!(
            proposal.command,
            debit("alice", key),
            "proposal {key} out of order"
        );
        pending.push(proposal);
    }
    // Answer in reverse order: each submitter still gets its own outcome.
    for (key, proposal) in pending.into_iter().enumerate().rev() {
        proposal.answer(Ok(accepted(key as u64 + 1)));
    }
    for (key, submission) in submissions.into_iter().enumerate() {
        assert_eq!(submission.await, Ok(accepted(key as u64 + 1)));
    }
}

#[tokio::test]
async fn an_account_beyond_its_in_flight_bound_is_overloaded() {
    let runtime = ActorRuntime::start(1).expect("actor runtime starts");
    let actors = AccountActors::new(&runtime, limits(2, Duration::from_secs(60)));
    let (proposer, mut proposals) = manual_proposer(0, 100);
    let mut submissions: Vec<Submission> = (0..2)
        .map(|key| submission(&actors, &proposer, debit("bob", key)))
        .collect();
    start_in_order(&mut submissions).await;
    let first = proposals.next().await.expect("first proposal");
    let second = proposals.next().await.expect("second proposal");

    let third = actors.submit(&proposer, debit("bob", 2)).await;
    assert_eq!(
        third,
        Err(SubmitError::Overloaded {
            account_id: "bob".to_owned()
        })
    );
    assert!(
        proposals.try_next().is_none(),
        "an overloaded command is not proposed"
    );
    // Another account is not affected by bob's bound.
    let mut other: Vec<Submission> = vec![submission(&actors, &proposer, debit("carol", 0))];
    start_in_order(&mut other).await;
    proposals
        .next()
        .await
        .expect("carol's proposal")
        .answer(Ok(accepted(1)));
    assert_eq!(other.pop().expect("one").await, Ok(accepted(1)));

    // Once bob's commands are decided there is room again.
    first.answer(Ok(accepted(1)));
    second.answer(Ok(accepted(2)));
    for submission in submissions {
        submission.await.expect("decided");
    }
    let mut fourth: Vec<Submission> = vec![submission(&actors, &proposer, debit("bob", 3))];
    start_in_order(&mut fourth).await;
    proposals
        .next()
        .await
        .expect("bob again")
        .answer(Ok(accepted(4)));
    assert_eq!(fourth.pop().expect("one").await, Ok(accepted(4)));
}

#[tokio::test]
async fn proposer_errors_reach_the_submitter() {
    let runtime = ActorRuntime::start(1).expect("actor runtime starts");
    let actors = AccountActors::new(&runtime, limits(100, Duration::from_secs(60)));
    let (proposer, mut proposals) = manual_proposer(3, 1);

    let mut not_leader: Vec<Submission> = vec![submission(&actors, &proposer, debit("dave", 0))];
    start_in_order(&mut not_leader).await;
    let not_leader_error = ProposeError::NotLeader {
        shard: 3,
        leader: Some(2),
    };
    proposals
        .next()
        .await
        .expect("proposal")
        .answer(Err(not_leader_error.clone()));
    assert_eq!(
        not_leader.pop().expect("one").await,
        Err(SubmitError::Propose(not_leader_error))
    );

    // A proposal dropped without an answer (leader lost mid-flight): the outcome is unknown.
    let mut dropped: Vec<Submission> = vec![submission(&actors, &proposer, debit("dave", 1))];
    start_in_order(&mut dropped).await;
    drop(proposals.next().await.expect("proposal"));
    assert_eq!(
        dropped.pop().expect("one").await,
        Err(SubmitError::Propose(ProposeError::OutcomeUnknown {
            shard: 3
        }))
    );

    // A full proposer queue (capacity 1) is overload, not a wait. Fill the queue directly (the
    // proposer handle's own non-blocking `propose`), then submit through an actor.
    let queued = proposer
        .propose(debit("erin", 0))
        .expect("the queue has room for one");
    assert_eq!(
        actors.submit(&proposer, debit("frank", 0)).await,
        Err(SubmitError::Propose(ProposeError::Overloaded { shard: 3 }))
    );
    assert!(proposals
        .try_next()
        .is_some_and(|proposal| proposal.command == debit("erin", 0)));
    drop(queued);
}

#[tokio::test]
async fn idle_actors_are_evicted_and_recreated_on_demand() {
    let runtime = ActorRuntime::start(2).expect("actor runtime starts");
    let actors = AccountActors::new(&runtime, limits(100, Duration::from_millis(50)));
    let (proposer, mut proposals) = manual_proposer(0, 100);
    for round in 0..2 {
        let mut submissions: Vec<Submission> = (0..4)
            .map(|index| {
                let actors = actors.clone();
                let proposer = proposer.clone();
                Box::pin(async move {
                    actors
                        .submit(&proposer, debit(&format!("account-{index}"), round))
                        .await
                }) as Submission
            })
            .collect();
        start_in_order(&mut submissions).await;
        assert_eq!(actors.active_count(), 4, "one actor per active account");
        for _ in 0..4 {
            proposals
                .next()
                .await
                .expect("proposal")
                .answer(Ok(accepted(round as u64 + 1)));
        }
        for submission in submissions {
            assert_eq!(submission.await, Ok(accepted(round as u64 + 1)));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while actors.active_count() > 0 {
            assert!(Instant::now() < deadline, "idle actors were not evicted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A node's replica of a shard can be dropped and opened again (replicas move), which starts a
/// new proposer: an account's live actor must not keep feeding the stopped one. (Found by the
/// scale-out process test: requests answered "this node is shutting down" after a replica came
/// back to a node.)
#[tokio::test]
async fn an_actor_follows_a_new_proposer_of_its_shard() {
    let runtime = ActorRuntime::start(2).expect("actor runtime starts");
    let actors = AccountActors::new(&runtime, limits(100, Duration::from_secs(60)));
    let (old_proposer, mut old_proposals) = manual_proposer(0, 100);
    let mut first = submission(&actors, &old_proposer, debit("account-a", 0));
    start_in_order(std::slice::from_mut(&mut first)).await;
    old_proposals
        .next()
        .await
        .expect("proposal")
        .answer(Ok(accepted(1)));
    assert_eq!(first.await, Ok(accepted(1)));
    // The replica is dropped: its proposer stops (every handle of it is gone).
    drop(old_proposals);
    drop(old_proposer);

    let (new_proposer, mut new_proposals) = manual_proposer(0, 100);
    let mut second = submission(&actors, &new_proposer, debit("account-a", 1));
    start_in_order(std::slice::from_mut(&mut second)).await;
    // Without the fix the old actor takes the command and fails it against the stopped
    // proposer, and nothing ever reaches the new one.
    tokio::select! {
        proposal = new_proposals.next() => {
            proposal.expect("a proposal").answer(Ok(accepted(2)));
        }
        outcome = &mut second => panic!("decided without the new proposer: {outcome:?}"),
    }
    assert_eq!(second.await, Ok(accepted(2)));
}

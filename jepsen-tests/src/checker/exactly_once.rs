//! Exactly-once per key. For every client key of the history:
//! - every decided answer equals the first decided answer (a retry is answered with the same
//!   decision, also the same balance, since the decision is recorded);
//! - at most one answer says it was not a replay (two "fresh" answers = decided twice);
//! - the lookup after healing shows that same decision;
//! - a key whose every attempt failed definitely was never decided;
//! - per account, the consumed credits equal the sum of the decided debits' amounts and of the
//!   committed reservations' charges (a key applied twice consumes twice but is recorded once),
//!   and the reserved credits equal the holds of the reservations still active;
//! - every decided reservation call agrees with the reservation's state after healing.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckResult, FinalState, Lookup, ReservationLookup};
use crate::history::{Answer, ClientKey, Operation, Outcome, Request};

pub const NAME: &str = "exactly-once";

pub fn check(operations: &[Operation], final_state: &FinalState) -> CheckResult {
    let mut by_key: BTreeMap<(&str, ClientKey), Vec<&Operation>> = BTreeMap::new();
    for operation in operations {
        if let Some(key) = operation.request.client_key() {
            by_key
                .entry((operation.account.as_str(), key))
                .or_default()
                .push(operation);
        }
    }
    let mut anomalies = Vec::new();
    let mut unknowns = Vec::new();
    let mut decided_keys = 0_usize;
    for ((account, key), attempts) in &by_key {
        let answers: Vec<(&Operation, &Answer)> = attempts
            .iter()
            .filter_map(|operation| match &operation.outcome {
                Outcome::Ok(answer) => Some((*operation, answer)),
                _ => None,
            })
            .collect();
        if let Some((first_operation, first)) = answers.first() {
            decided_keys += 1;
            for (operation, answer) in &answers[1..] {
                if decision(answer) != decision(first) {
                    anomalies.push(format!(
                        "{account} {key}: a retry was answered differently from the first \
                         decided answer:\n    first: {}\n    later: {}",
                        first_operation.describe(),
                        operation.describe()
                    ));
                }
            }
            let fresh: Vec<&&Operation> = answers
                .iter()
                .filter(|(_, answer)| is_fresh(answer))
                .map(|(operation, _)| operation)
                .collect();
            if fresh.len() > 1 {
                anomalies.push(format!(
                    "{account} {key}: decided {} times (answers not marked as replays):\n    {}",
                    fresh.len(),
                    fresh
                        .iter()
                        .map(|operation| operation.describe())
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        if let ClientKey::Debit(debit_key) = key {
            match final_state
                .debit_lookups
                .get(&(account.to_string(), debit_key.clone()))
            {
                Some(Lookup::Decided {
                    accepted,
                    amount,
                    available,
                    code,
                }) => {
                    if let Some((operation, first)) = answers.first() {
                        let looked_up = DebitDecision {
                            accepted: *accepted,
                            amount: *amount,
                            available: *available,
                            code: code.clone(),
                        };
                        if decision(first) != Some(looked_up.clone()) {
                            anomalies.push(format!(
                                "{account} {key}: the lookup after healing shows {looked_up:?}, \
                                 but the client was told: {}",
                                operation.describe()
                            ));
                        }
                    }
                    let every_attempt_failed = attempts
                        .iter()
                        .all(|operation| matches!(operation.outcome, Outcome::Fail(_)));
                    if every_attempt_failed {
                        anomalies.push(format!(
                            "{account} {key}: every attempt failed definitely, yet the key was \
                             decided: {}",
                            attempts
                                .iter()
                                .map(|operation| operation.describe())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ));
                    }
                }
                Some(Lookup::Failed(error)) => unknowns.push(format!(
                    "{account} {key}: lookup after healing failed: {error}"
                )),
                // A decided key that is missing is a durability anomaly, judged there.
                Some(Lookup::NotDecided) | None => {}
            }
        }
    }
    anomalies.extend(consumed_matches_decided_debits(final_state, &mut unknowns));
    anomalies.extend(reservations_match_their_answers(operations, final_state));
    let summary = format!(
        "{} keys ({} with a decided answer), {} anomalies",
        by_key.len(),
        decided_keys,
        anomalies.len()
    );
    CheckResult::from_findings(NAME, summary, anomalies, unknowns)
}

/// Per account: consumed == Σ amounts of the debit keys the lookups show accepted + Σ credits
/// the reservations the lookups show committed consumed, and reserved == Σ amounts of the
/// reservations the lookups show active. An account with a failed lookup is unknown.
fn consumed_matches_decided_debits(
    final_state: &FinalState,
    unknowns: &mut Vec<String>,
) -> Vec<String> {
    let mut decided_sum: BTreeMap<&str, u64> = BTreeMap::new();
    let mut held_sum: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lookup_failed: BTreeSet<&str> = BTreeSet::new();
    for ((account, _), lookup) in &final_state.debit_lookups {
        match lookup {
            Lookup::Decided {
                accepted: true,
                amount,
                ..
            } => *decided_sum.entry(account.as_str()).or_default() += amount.unwrap_or(0),
            Lookup::Failed(_) => {
                lookup_failed.insert(account.as_str());
            }
            _ => {}
        }
    }
    for ((account, _), lookup) in &final_state.reservation_lookups {
        match lookup {
            ReservationLookup::Found {
                status,
                amount,
                committed,
            } => {
                *decided_sum.entry(account.as_str()).or_default() += committed.unwrap_or(0);
                if status == "active" {
                    *held_sum.entry(account.as_str()).or_default() += amount;
                }
            }
            ReservationLookup::Failed(_) => {
                lookup_failed.insert(account.as_str());
            }
            ReservationLookup::NotFound => {}
        }
    }
    let mut anomalies = Vec::new();
    for (account, snapshot) in &final_state.accounts {
        let Ok(snapshot) = snapshot else {
            unknowns.push(format!("{account}: final state unreadable"));
            continue;
        };
        if lookup_failed.contains(account.as_str()) {
            unknowns.push(format!(
                "{account}: a lookup after healing failed; its sums are not checked"
            ));
            continue;
        }
        let decided = decided_sum.get(account.as_str()).copied().unwrap_or(0);
        if snapshot.consumed != decided {
            anomalies.push(format!(
                "{account}: consumed {} credits, but the debits and reservation commits decided \
                 as accepted sum to {decided} (a key applied more than once, or a charge applied \
                 without its record)",
                snapshot.consumed
            ));
        }
        let held = held_sum.get(account.as_str()).copied().unwrap_or(0);
        if snapshot.reserved != held {
            anomalies.push(format!(
                "{account}: {} credits reserved, but the reservations still active hold {held}",
                snapshot.reserved
            ));
        }
    }
    anomalies
}

/// Every reservation call the client saw decided agrees with the reservation's final state: a
/// rejected reserve left a `rejected` record, an accepted one did not; an accepted commit left
/// it `committed` with the amount asked; an accepted release left it `released`; a reservation
/// whose every call failed definitely was never decided.
fn reservations_match_their_answers(
    operations: &[Operation],
    final_state: &FinalState,
) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut calls: BTreeMap<(&str, &str), Vec<&Operation>> = BTreeMap::new();
    for operation in operations {
        let reservation_id = match &operation.request {
            Request::Reserve { reservation_id, .. }
            | Request::CommitReservation { reservation_id, .. }
            | Request::ReleaseReservation { reservation_id } => reservation_id.as_str(),
            _ => continue,
        };
        calls
            .entry((operation.account.as_str(), reservation_id))
            .or_default()
            .push(operation);
    }
    for ((account, reservation_id), operations) in calls {
        let Some(lookup) = final_state
            .reservation_lookups
            .get(&(account.to_string(), reservation_id.to_string()))
        else {
            continue;
        };
        let (status, committed) = match lookup {
            ReservationLookup::Found {
                status, committed, ..
            } => (status.as_str(), *committed),
            ReservationLookup::NotFound => {
                if let Some(decided) = operations.iter().find(|operation| {
                    matches!(
                        operation.outcome,
                        Outcome::Ok(Answer::Reservation { accepted: true, .. })
                    )
                }) {
                    anomalies.push(format!(
                        "{account} reservation {reservation_id}: unknown after healing, yet the \
                         client was told: {}",
                        decided.describe()
                    ));
                }
                continue;
            }
            ReservationLookup::Failed(_) => continue,
        };
        if operations
            .iter()
            .all(|operation| matches!(operation.outcome, Outcome::Fail(_)))
        {
            anomalies.push(format!(
                "{account} reservation {reservation_id}: every call failed definitely, yet it \
                 is {status}"
            ));
        }
        for operation in operations {
            let Outcome::Ok(Answer::Reservation {
                accepted,
                status: answered,
                ..
            }) = &operation.outcome
            else {
                continue;
            };
            let agrees = match (&operation.request, accepted) {
                (Request::Reserve { .. }, true) => status != "rejected",
                (Request::Reserve { .. }, false) => status == "rejected",
                (Request::CommitReservation { amount, .. }, true) => {
                    status == "committed" && committed == Some(*amount)
                }
                // A release is answered `released`, or `expired` when the time to live had
                // already released the hold; the final state must be the one answered.
                (Request::ReleaseReservation { .. }, true) => {
                    status == answered.as_deref().unwrap_or("released")
                }
                // A refused commit or release leaves whatever state the reservation had.
                _ => true,
            };
            if !agrees {
                anomalies.push(format!(
                    "{account} reservation {reservation_id}: after healing it is {status} \
                     (committed {committed:?}), but the client was told: {}",
                    operation.describe()
                ));
            }
        }
    }
    anomalies
}

/// The comparable part of a decided answer: the decision itself, not the replay mark.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DebitDecision {
    accepted: bool,
    amount: Option<u64>,
    available: Option<i64>,
    code: Option<String>,
}

fn decision(answer: &Answer) -> Option<DebitDecision> {
    match answer {
        Answer::Debit {
            accepted,
            amount,
            available,
            code,
            ..
        } => Some(DebitDecision {
            accepted: *accepted,
            amount: *amount,
            available: *available,
            code: code.clone(),
        }),
        Answer::Reservation { accepted, code, .. } => Some(DebitDecision {
            accepted: *accepted,
            amount: None,
            available: None,
            code: code.clone(),
        }),
        Answer::Grant { .. } => Some(DebitDecision {
            accepted: true,
            amount: None,
            available: None,
            code: None,
        }),
        Answer::Read(_) => None,
    }
}

fn is_fresh(answer: &Answer) -> bool {
    match answer {
        Answer::Debit { replayed, .. } | Answer::Grant { replayed } => !replayed,
        Answer::Reservation { replayed, .. } => *replayed == Some(false),
        Answer::Read(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Verdict;
    use crate::history::AccountSnapshot;

    fn final_state(consumed: u64, lookups: &[(&str, Lookup)]) -> FinalState {
        let mut state = FinalState::default();
        state.accounts.insert(
            "a".to_owned(),
            Ok(AccountSnapshot {
                available: 100 - consumed as i64,
                consumed,
                granted: 100,
                ..AccountSnapshot::default()
            }),
        );
        for (key, lookup) in lookups {
            state
                .debit_lookups
                .insert(("a".to_owned(), key.to_string()), lookup.clone());
        }
        state
    }

    fn decided(amount: u64, available: i64) -> Lookup {
        Lookup::Decided {
            accepted: true,
            amount: Some(amount),
            available: Some(available),
            code: None,
        }
    }

    #[test]
    fn a_retry_replayed_with_the_same_decision_is_valid() {
        let history = HistoryBuilder::new()
            .op(1, "a", debit("k1", 10), 0, Some(10), info())
            .op(
                1,
                "a",
                debit("k1", 10),
                20,
                Some(30),
                accepted(10, 90, true),
            )
            .op(
                1,
                "a",
                debit("k1", 10),
                40,
                Some(50),
                accepted(10, 90, true),
            )
            .build();
        let result = check(&history, &final_state(10, &[("k1", decided(10, 90))]));
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
    }

    #[test]
    fn a_key_applied_twice_is_caught() {
        // Both answers claim to be fresh, and the account consumed twice what the record says.
        let history = HistoryBuilder::new()
            .op(
                1,
                "a",
                debit("k1", 10),
                0,
                Some(10),
                accepted(10, 90, false),
            )
            .op(
                1,
                "a",
                debit("k1", 10),
                20,
                Some(30),
                accepted(10, 80, false),
            )
            .build();
        let result = check(&history, &final_state(20, &[("k1", decided(10, 90))]));
        assert_eq!(result.verdict, Verdict::Invalid);
        let text = result.details.join("\n");
        assert!(text.contains("answered differently"), "{text}");
        assert!(text.contains("decided 2 times"), "{text}");
        assert!(text.contains("consumed 20"), "{text}");
    }

    #[test]
    fn a_rejection_then_an_acceptance_of_one_key_is_caught() {
        let history = HistoryBuilder::new()
            .op(1, "a", debit("k1", 10), 0, Some(10), rejected(false))
            .op(
                1,
                "a",
                debit("k1", 10),
                20,
                Some(30),
                accepted(10, 90, true),
            )
            .build();
        let result = check(&history, &final_state(10, &[("k1", decided(10, 90))]));
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn a_key_decided_after_only_definite_failures_is_caught() {
        let history = HistoryBuilder::new()
            .op(1, "a", debit("k1", 10), 0, Some(10), fail())
            .build();
        let result = check(&history, &final_state(10, &[("k1", decided(10, 90))]));
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.details[0].contains("failed definitely"));
    }

    #[test]
    fn a_failed_lookup_makes_the_verdict_unknown_not_valid() {
        let history = HistoryBuilder::new()
            .op(1, "a", debit("k1", 10), 0, None, info())
            .build();
        let result = check(
            &history,
            &final_state(10, &[("k1", Lookup::Failed("timeout".into()))]),
        );
        assert_eq!(result.verdict, Verdict::Unknown);
    }

    fn reservation_answer(accepted: bool) -> Outcome {
        Outcome::Ok(Answer::Reservation {
            accepted,
            code: (!accepted).then(|| "insufficient_credits".to_owned()),
            replayed: Some(false),
            status: None,
        })
    }

    fn reserve(id: &str, amount: u64) -> Request {
        Request::Reserve {
            reservation_id: id.to_owned(),
            amount,
            ttl_ms: 5_000,
        }
    }

    fn commit(id: &str, amount: u64) -> Request {
        Request::CommitReservation {
            reservation_id: id.to_owned(),
            amount,
        }
    }

    fn found(status: &str, amount: u64, committed: Option<u64>) -> ReservationLookup {
        ReservationLookup::Found {
            status: status.to_owned(),
            amount,
            committed,
        }
    }

    /// Account "a": one debit k1 of 10 decided, reservations r1 (committed 4 of 10) and r2
    /// (active, 7 held), as the lookups after healing show them.
    fn with_reservations(consumed: u64, reserved: u64, r1: ReservationLookup) -> FinalState {
        let mut state = final_state(consumed, &[("k1", decided(10, 90))]);
        if let Some(Ok(snapshot)) = state.accounts.get_mut("a") {
            snapshot.reserved = reserved;
            snapshot.available = 100 - consumed as i64 - reserved as i64;
        }
        state
            .reservation_lookups
            .insert(("a".to_owned(), "r1".to_owned()), r1);
        state
            .reservation_lookups
            .insert(("a".to_owned(), "r2".to_owned()), found("active", 7, None));
        state
    }

    fn reservation_history() -> Vec<Operation> {
        reservation_history_ending_with(commit("r1", 4), reservation_answer(true))
    }

    /// Debit k1, reserve r1, then `last` on r1 answered `answer`; r2 reserved with no answer.
    fn reservation_history_ending_with(last: Request, answer: Outcome) -> Vec<Operation> {
        HistoryBuilder::new()
            .op(
                1,
                "a",
                debit("k1", 10),
                0,
                Some(10),
                accepted(10, 90, false),
            )
            .op(
                1,
                "a",
                reserve("r1", 10),
                20,
                Some(30),
                reservation_answer(true),
            )
            .op(1, "a", last, 40, Some(50), answer)
            .op(2, "a", reserve("r2", 7), 20, None, info())
            .build()
    }

    #[test]
    fn commits_count_as_consumed_and_active_holds_as_reserved() {
        let state = with_reservations(14, 7, found("committed", 10, Some(4)));
        let result = check(&reservation_history(), &state);
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
    }

    #[test]
    fn a_commit_applied_twice_or_a_lost_hold_is_caught() {
        // The commit consumed twice: consumed 18 where the records account for 14.
        let state = with_reservations(18, 7, found("committed", 10, Some(4)));
        let result = check(&reservation_history(), &state);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result.details.join("\n").contains("consumed 18"),
            "{result:?}"
        );
        // A hold of an active reservation vanished from the account.
        let state = with_reservations(14, 0, found("committed", 10, Some(4)));
        let result = check(&reservation_history(), &state);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result.details.join("\n").contains("0 credits reserved"),
            "{result:?}"
        );
    }

    #[test]
    fn a_commit_acknowledged_but_not_in_the_final_state_is_caught() {
        let state = with_reservations(10, 7, found("expired", 10, None));
        let result = check(&reservation_history(), &state);
        assert_eq!(result.verdict, Verdict::Invalid);
        let text = result.details.join("\n");
        assert!(text.contains("after healing it is expired"), "{text}");
    }

    /// Seed 602 (session 6): a release sent after the reservation's time to live was answered
    /// 200 with status `expired` (the expiry had released the hold), and the reservation is
    /// `expired` after healing. That is the answer agreeing with the state, not an anomaly; a
    /// release answered `released` that ends `expired` still is one.
    #[test]
    fn a_release_answered_expired_agrees_with_an_expired_reservation() {
        let release_answered = |status: &str| {
            reservation_history_ending_with(
                Request::ReleaseReservation {
                    reservation_id: "r1".to_owned(),
                },
                Outcome::Ok(Answer::Reservation {
                    accepted: true,
                    code: None,
                    replayed: Some(true),
                    status: Some(status.to_owned()),
                }),
            )
        };
        let state = with_reservations(10, 7, found("expired", 10, None));
        let result = check(&release_answered("expired"), &state);
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
        let result = check(&release_answered("released"), &state);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result
                .details
                .join("\n")
                .contains("after healing it is expired"),
            "{result:?}"
        );
    }

    #[test]
    fn an_acknowledged_reservation_unknown_after_healing_is_caught() {
        let state = with_reservations(10, 7, ReservationLookup::NotFound);
        let result = check(&reservation_history(), &state);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.details.join("\n").contains("unknown after healing"));
    }
}

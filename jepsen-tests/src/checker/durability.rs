//! Durability: every acknowledged (`ok`) operation is still there after healing. A decided
//! debit key is found by `GET /v1/accounts/{id}/debits/{key}` with the same decision (the
//! comparison of the decision itself is the exactly-once checker's); an acknowledged grant is
//! listed on the final account with its amount.

use super::{CheckResult, FinalState, Lookup};
use crate::history::{Answer, Operation, Outcome, Request};

pub const NAME: &str = "durability";

pub fn check(operations: &[Operation], final_state: &FinalState) -> CheckResult {
    let mut anomalies = Vec::new();
    let mut unknowns = Vec::new();
    let mut acknowledged = 0_usize;
    for operation in operations {
        let Outcome::Ok(answer) = &operation.outcome else {
            continue;
        };
        match (&operation.request, answer) {
            (Request::Debit { key, .. }, Answer::Debit { .. }) => {
                acknowledged += 1;
                match final_state
                    .debit_lookups
                    .get(&(operation.account.clone(), key.clone()))
                {
                    Some(Lookup::Decided { .. }) => {}
                    Some(Lookup::NotDecided) => anomalies.push(format!(
                        "acknowledged debit lost (the key is unknown after healing): {}",
                        operation.describe()
                    )),
                    Some(Lookup::Failed(error)) => unknowns.push(format!(
                        "{} {key}: lookup failed: {error}",
                        operation.account
                    )),
                    None => unknowns.push(format!("{} {key}: never looked up", operation.account)),
                }
            }
            (Request::Grant { grant_id, amount }, Answer::Grant { .. }) => {
                acknowledged += 1;
                match final_state.accounts.get(&operation.account) {
                    Some(Ok(snapshot)) => match snapshot.grants.get(grant_id) {
                        Some(listed) if listed == amount => {}
                        Some(listed) => anomalies.push(format!(
                            "acknowledged grant holds {listed} instead of {amount}: {}",
                            operation.describe()
                        )),
                        None => anomalies
                            .push(format!("acknowledged grant lost: {}", operation.describe())),
                    },
                    Some(Err(error)) => unknowns.push(format!(
                        "{}: final state unreadable: {error}",
                        operation.account
                    )),
                    None => {
                        unknowns.push(format!("{}: never read after healing", operation.account))
                    }
                }
            }
            _ => {}
        }
    }
    unknowns.sort();
    unknowns.dedup();
    let summary = format!(
        "{acknowledged} acknowledged writes, {} lost",
        anomalies.len()
    );
    CheckResult::from_findings(NAME, summary, anomalies, unknowns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Verdict;
    use crate::history::AccountSnapshot;

    fn state(lookup: Lookup, grants: &[(&str, u64)]) -> FinalState {
        let mut state = FinalState::default();
        state
            .debit_lookups
            .insert(("a".to_owned(), "k1".to_owned()), lookup);
        state.accounts.insert(
            "a".to_owned(),
            Ok(AccountSnapshot {
                grants: grants
                    .iter()
                    .map(|(id, amount)| (id.to_string(), *amount))
                    .collect(),
                ..AccountSnapshot::default()
            }),
        );
        state
    }

    fn history() -> Vec<Operation> {
        HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(5), granted(false))
            .op(
                1,
                "a",
                debit("k1", 10),
                10,
                Some(20),
                accepted(10, 90, false),
            )
            .build()
    }

    #[test]
    fn everything_acknowledged_is_found() {
        let lookup = Lookup::Decided {
            accepted: true,
            amount: Some(10),
            available: Some(90),
            code: None,
        };
        assert_eq!(
            check(&history(), &state(lookup, &[("g1", 100)])).verdict,
            Verdict::Valid
        );
    }

    #[test]
    fn a_lost_debit_and_a_lost_grant_are_caught() {
        let result = check(&history(), &state(Lookup::NotDecided, &[]));
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.details.len(), 2, "{:?}", result.details);
    }
}

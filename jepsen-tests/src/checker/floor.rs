//! No overspend: the available balance never goes below minus the account's overdraft limit
//! (0 unless the account allows overage), in any read, in any accepted debit's answer, or in the
//! final state; and every read shows the overdraft limit the account was created with.

use super::{CheckResult, FinalState};
use crate::history::{Answer, Operation, Outcome};

pub const NAME: &str = "balance floor";

pub fn check(operations: &[Operation], final_state: &FinalState) -> CheckResult {
    let mut anomalies = Vec::new();
    let mut unknowns = Vec::new();
    let mut observed = 0_usize;
    let limit_of = |account: &str| final_state.overdraft_limits.get(account).copied();
    for operation in operations {
        let Some(limit) = limit_of(&operation.account) else {
            continue;
        };
        let floor = -i128::from(limit);
        match &operation.outcome {
            Outcome::Ok(Answer::Read(snapshot)) => {
                observed += 1;
                if i128::from(snapshot.available) < floor {
                    anomalies.push(format!("below the floor {floor}: {}", operation.describe()));
                }
                if snapshot.overdraft_limit != limit {
                    anomalies.push(format!(
                        "overdraft limit {} read, the account was created with {limit}: {}",
                        snapshot.overdraft_limit,
                        operation.describe()
                    ));
                }
            }
            Outcome::Ok(Answer::Debit {
                accepted: true,
                available: Some(available),
                ..
            }) => {
                observed += 1;
                if i128::from(*available) < floor {
                    anomalies.push(format!("below the floor {floor}: {}", operation.describe()));
                }
            }
            _ => {}
        }
    }
    for (account, snapshot) in &final_state.accounts {
        match (snapshot, limit_of(account)) {
            (Ok(snapshot), Some(limit)) => {
                observed += 1;
                if i128::from(snapshot.available) < -i128::from(limit) {
                    anomalies.push(format!(
                        "{account} final available {} is below the floor -{limit}",
                        snapshot.available
                    ));
                }
            }
            (Err(error), _) => unknowns.push(format!("{account}: final state unreadable: {error}")),
            (Ok(_), None) => {}
        }
    }
    let summary = format!(
        "{observed} balances observed, {} below the floor",
        anomalies.len()
    );
    CheckResult::from_findings(NAME, summary, anomalies, unknowns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Verdict;
    use crate::history::Request;

    fn limits(limit: u64) -> FinalState {
        let mut state = FinalState::default();
        state.overdraft_limits.insert("a".to_owned(), limit);
        state
    }

    #[test]
    fn an_overdraft_within_the_limit_is_valid_and_beyond_it_is_caught() {
        let history = HistoryBuilder::new()
            .op(
                1,
                "a",
                debit("k1", 30),
                0,
                Some(10),
                accepted(30, -20, false),
            )
            .build();
        assert_eq!(check(&history, &limits(50)).verdict, Verdict::Valid);
        assert_eq!(check(&history, &limits(0)).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_negative_read_without_overdraft_is_caught() {
        let history = HistoryBuilder::new()
            .op(1, "a", Request::Read, 0, Some(10), read(-1, 11, 10))
            .build();
        let result = check(&history, &limits(0));
        assert_eq!(result.verdict, Verdict::Invalid);
    }
}

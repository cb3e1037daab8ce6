//! Conservation: credits are neither created nor destroyed. Per account and in total,
//! granted = available + reserved + consumed + expired + voided, in every linearizable read of
//! the history and in the final state; and the final grants are exactly grants the clients
//! asked for, with the amounts they asked for.

use std::collections::BTreeMap;

use super::{CheckResult, FinalState};
use crate::history::{AccountSnapshot, Answer, Operation, Outcome, Request};

pub const NAME: &str = "conservation";

pub fn check(operations: &[Operation], final_state: &FinalState) -> CheckResult {
    let mut anomalies = Vec::new();
    let mut unknowns = Vec::new();
    let mut reads = 0_usize;
    for operation in operations {
        if let Outcome::Ok(Answer::Read(snapshot)) = &operation.outcome {
            reads += 1;
            if let Some(problem) = imbalance(snapshot) {
                anomalies.push(format!("read {}: {problem}", operation.describe()));
            }
        }
    }
    let mut requested: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for operation in operations {
        if let Request::Grant { grant_id, amount } = &operation.request {
            requested.insert((operation.account.as_str(), grant_id.as_str()), *amount);
        }
    }
    let mut total_granted = 0_i128;
    let mut total_accounted = 0_i128;
    for (account, snapshot) in &final_state.accounts {
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                unknowns.push(format!("{account}: final state unreadable: {error}"));
                continue;
            }
        };
        total_granted += i128::from(snapshot.granted);
        total_accounted += snapshot.accounted();
        if let Some(problem) = imbalance(snapshot) {
            anomalies.push(format!("{account} final state: {problem}"));
        }
        for (grant_id, amount) in &snapshot.grants {
            match requested.get(&(account.as_str(), grant_id.as_str())) {
                None => anomalies.push(format!(
                    "{account}: grant {grant_id} of {amount} credits exists but no client asked for it"
                )),
                Some(asked) if asked != amount => anomalies.push(format!(
                    "{account}: grant {grant_id} holds {amount} credits, the client asked for {asked}"
                )),
                Some(_) => {}
            }
        }
    }
    if total_granted != total_accounted {
        anomalies.push(format!(
            "in total: granted {total_granted} but available + reserved + consumed + expired + \
             voided = {total_accounted}"
        ));
    }
    let summary = format!(
        "{reads} reads and {} final accounts; total granted {total_granted}, accounted \
         {total_accounted}",
        final_state.accounts.len()
    );
    CheckResult::from_findings(NAME, summary, anomalies, unknowns)
}

fn imbalance(snapshot: &AccountSnapshot) -> Option<String> {
    let accounted = snapshot.accounted();
    (i128::from(snapshot.granted) != accounted).then(|| {
        format!(
            "granted {} != available {} + reserved {} + consumed {} + expired {} + voided {} = {accounted}",
            snapshot.granted,
            snapshot.available,
            snapshot.reserved,
            snapshot.consumed,
            snapshot.expired,
            snapshot.voided
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Verdict;

    fn final_with(snapshot: AccountSnapshot) -> FinalState {
        let mut state = FinalState::default();
        state.accounts.insert("a".to_owned(), Ok(snapshot));
        state
    }

    fn snapshot(available: i64, consumed: u64, grants: &[(&str, u64)]) -> AccountSnapshot {
        let grants: BTreeMap<String, u64> = grants
            .iter()
            .map(|(id, amount)| (id.to_string(), *amount))
            .collect();
        AccountSnapshot {
            available,
            consumed,
            granted: grants.values().sum(),
            grants,
            ..AccountSnapshot::default()
        }
    }

    #[test]
    fn balanced_reads_and_state_are_valid() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(5), granted(false))
            .op(1, "a", Request::Read, 10, Some(20), read(70, 30, 100))
            .build();
        let result = check(&history, &final_with(snapshot(60, 40, &[("g1", 100)])));
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
    }

    #[test]
    fn a_read_that_lost_credits_is_caught() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(5), granted(false))
            .op(1, "a", Request::Read, 10, Some(20), read(70, 20, 100))
            .build();
        let result = check(&history, &final_with(snapshot(60, 40, &[("g1", 100)])));
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result.details[0].contains("granted 100 != available 70"),
            "{:?}",
            result.details
        );
    }

    #[test]
    fn an_unbalanced_final_state_and_an_unknown_grant_are_caught() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(5), granted(false))
            .build();
        let result = check(&history, &final_with(snapshot(60, 30, &[("g1", 100)])));
        assert_eq!(result.verdict, Verdict::Invalid);
        let result = check(
            &history,
            &final_with(snapshot(60, 90, &[("g1", 100), ("g9", 50)])),
        );
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result
            .details
            .iter()
            .any(|line| line.contains("no client asked")));
    }
}

//! Checkers: each judges the history (and the state read after healing) on its own and returns
//! a [`CheckResult`]. None of them uses the ledger's code: expectations come from the history,
//! a small model of an account ([`linearizability`]) and arithmetic.

pub mod availability;
pub mod conservation;
pub mod durability;
pub mod exactly_once;
pub mod floor;
pub mod linearizability;
pub mod replicas;

use std::collections::BTreeMap;

use crate::history::AccountSnapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// An anomaly was found.
    Invalid,
    /// The checker could not decide (a read after healing failed, a search hit its bound).
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "INVALID",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The verdict of one checker with what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub verdict: Verdict,
    /// One line: what was checked and the counts.
    pub summary: String,
    /// The anomalies (or why the verdict is unknown), most important first.
    pub details: Vec<String>,
}

/// Most anomalies listed per checker; the count is always given.
pub const DETAILS_MAX: usize = 20;

impl CheckResult {
    /// Valid when there is no anomaly and nothing unknown; invalid on any anomaly.
    pub fn from_findings(
        name: &'static str,
        summary: String,
        anomalies: Vec<String>,
        unknowns: Vec<String>,
    ) -> CheckResult {
        let verdict = if !anomalies.is_empty() {
            Verdict::Invalid
        } else if !unknowns.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Valid
        };
        let total = anomalies.len();
        let mut details: Vec<String> = anomalies.into_iter().take(DETAILS_MAX).collect();
        if total > DETAILS_MAX {
            details.push(format!("... and {} more anomalies", total - DETAILS_MAX));
        }
        details.extend(unknowns.into_iter().take(DETAILS_MAX));
        CheckResult {
            name,
            verdict,
            summary,
            details,
        }
    }
}

/// The decided outcome of a debit key as `GET /v1/accounts/{id}/debits/{key}` showed it after
/// healing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Decided {
        accepted: bool,
        amount: Option<u64>,
        available: Option<i64>,
        code: Option<String>,
    },
    /// 404: the key was never decided.
    NotDecided,
    /// The lookup itself failed (the key's fate is unknown to the checkers).
    Failed(String),
}

/// A reservation as `GET /v1/accounts/{id}/reservations/{rid}` showed it after healing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservationLookup {
    Found {
        /// `active`, `committed`, `released`, `expired` or `rejected`.
        status: String,
        /// Credits held.
        amount: u64,
        /// Credits the commit consumed.
        committed: Option<u64>,
    },
    /// 404: no reserve with this id was ever decided.
    NotFound,
    /// The lookup itself failed.
    Failed(String),
}

/// What the harness read after healing, with linearizable reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalState {
    /// Every account of the run; `Err` when it could not be read.
    pub accounts: BTreeMap<String, Result<AccountSnapshot, String>>,
    /// (account, debit key) → lookup, for every debit key of the history.
    pub debit_lookups: BTreeMap<(String, String), Lookup>,
    /// (account, reservation id) → lookup, for every reservation id of the history.
    pub reservation_lookups: BTreeMap<(String, String), ReservationLookup>,
    /// The overdraft limit each account was created with.
    pub overdraft_limits: BTreeMap<String, u64>,
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Hand-built histories for the checkers' tests.

    use crate::history::{Answer, Operation, Outcome, Request, Workload};

    /// Builds operations with explicit times (microseconds) and outcomes.
    #[derive(Default)]
    pub struct HistoryBuilder {
        operations: Vec<Operation>,
        next_index: u64,
    }

    impl HistoryBuilder {
        pub fn new() -> HistoryBuilder {
            HistoryBuilder::default()
        }

        pub fn op(
            &mut self,
            process: u32,
            account: &str,
            request: Request,
            invoke_us: u64,
            complete_us: Option<u64>,
            outcome: Outcome,
        ) -> &mut HistoryBuilder {
            let invoke_index = self.next_index;
            self.next_index += 1;
            let complete_index = complete_us.map(|_| {
                self.next_index += 1;
                self.next_index - 1
            });
            let op_id = self.operations.len() as u64;
            self.operations.push(Operation {
                op_id,
                process,
                workload: Workload::Linear,
                account: account.to_owned(),
                node: 1,
                request,
                invoke_index,
                invoke_us,
                complete_index,
                complete_us,
                outcome,
            });
            self
        }

        /// Events are re-indexed by time, so that indexes follow real time as the recorder's do.
        pub fn build(&self) -> Vec<Operation> {
            let mut times: Vec<(u64, u8, usize)> = Vec::new();
            for (position, operation) in self.operations.iter().enumerate() {
                times.push((operation.invoke_us, 0, position));
                if let Some(complete) = operation.complete_us {
                    times.push((complete, 1, position));
                }
            }
            times.sort();
            let mut operations = self.operations.clone();
            for (index, (_, is_completion, position)) in times.into_iter().enumerate() {
                if is_completion == 1 {
                    operations[position].complete_index = Some(index as u64);
                } else {
                    operations[position].invoke_index = index as u64;
                }
            }
            operations.sort_by_key(|operation| operation.invoke_index);
            operations
        }
    }

    pub fn debit(key: &str, amount: u64) -> Request {
        Request::Debit {
            key: key.to_owned(),
            amount,
        }
    }

    pub fn grant(id: &str, amount: u64) -> Request {
        Request::Grant {
            grant_id: id.to_owned(),
            amount,
        }
    }

    pub fn accepted(amount: u64, available: i64, replayed: bool) -> Outcome {
        Outcome::Ok(Answer::Debit {
            accepted: true,
            amount: Some(amount),
            available: Some(available),
            code: None,
            replayed,
        })
    }

    pub fn rejected(replayed: bool) -> Outcome {
        Outcome::Ok(Answer::Debit {
            accepted: false,
            amount: None,
            available: None,
            code: Some("insufficient_credits".to_owned()),
            replayed,
        })
    }

    pub fn granted(replayed: bool) -> Outcome {
        Outcome::Ok(Answer::Grant { replayed })
    }

    pub fn read(available: i64, consumed: u64, granted: u64) -> Outcome {
        Outcome::Ok(Answer::Read(crate::history::AccountSnapshot {
            available,
            reserved: 0,
            consumed,
            granted,
            expired: 0,
            voided: 0,
            overdraft_limit: 0,
            grants: Default::default(),
        }))
    }

    pub fn info() -> Outcome {
        Outcome::Info("timed out".to_owned())
    }

    pub fn fail() -> Outcome {
        Outcome::Fail("503 no_leader".to_owned())
    }
}

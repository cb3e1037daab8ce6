//! Linearizability per account, with a WGL search (Wing & Gong, with Lowe's memoization, as in
//! Knossos and Porcupine).
//!
//! Accounts are independent objects, so the history is checked per account (P-compositionality):
//! the whole history is linearizable iff every account's sub-history is.
//!
//! The model of an account is the ledger's contract, written here from scratch: a debit of `a`
//! with a fresh key is accepted iff `available - a >= -overdraft_limit` (then available drops by
//! `a` and consumed grows by `a`) and otherwise rejected; either way the key's decision is
//! recorded and every later request with the key is answered with it, marked as a replay; a
//! grant adds its amount once per grant id; a read returns available, reserved, consumed and
//! granted. Operations:
//! - `ok` answers must match the model (value and replay mark);
//! - `fail` operations had no effect and are dropped;
//! - `info` operations may take effect at any point after their invocation, or never: their
//!   answer is unconstrained. An `info` of a key that some `ok` operation decided is bounded by
//!   that operation's completion (after it, the `info` can only be a replay, which changes
//!   nothing); reads without an `ok` are dropped.
//!
//! When an account fails, the smallest failing prefix of its history (by event order) is found
//! by bisection (a prefix of a linearizable history is linearizable, with the operations still
//! pending at the cut treated as `info`), and the report shows the operations the search could
//! not place there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use super::{CheckResult, FinalState, Lookup, Verdict};
use crate::history::{Answer, ClientKey, Operation, Outcome, Request};

pub const NAME: &str = "linearizability";

/// Bound of one account's search (model steps); beyond it the verdict is unknown.
pub const SEARCH_STEPS_MAX: u64 = 3_000_000;

/// Checks every account of `operations` (those of the accounts in `overdraft_limits`).
/// Checks the accounts of `overdraft_limits`. `final_state` (read after healing, after every
/// operation) tells which keys never applied: debit keys the lookup did not find, grants not on
/// the final account.
pub fn check(
    operations: &[Operation],
    overdraft_limits: &BTreeMap<String, u64>,
    final_state: &FinalState,
) -> CheckResult {
    let mut by_account: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in operations {
        if overdraft_limits.contains_key(&operation.account) {
            by_account
                .entry(operation.account.as_str())
                .or_default()
                .push(operation);
        }
    }
    let mut anomalies = Vec::new();
    let mut unknowns = Vec::new();
    let mut checked_ops = 0_usize;
    for (account, account_operations) in &by_account {
        let overdraft = overdraft_limits.get(*account).copied().unwrap_or(0);
        checked_ops += account_operations.len();
        let undecided = undecided_keys(account, account_operations, final_state);
        match check_account(account_operations, overdraft, &undecided) {
            SearchResult::Linearizable => {}
            SearchResult::Unknown { steps } => unknowns.push(format!(
                "{account}: search gave up after {steps} steps ({} operations)",
                account_operations.len()
            )),
            SearchResult::NotLinearizable(_) => {
                anomalies.push(explain_failure(
                    account,
                    account_operations,
                    overdraft,
                    &undecided,
                ));
            }
        }
    }
    let summary = format!(
        "{} accounts, {checked_ops} operations, {} not linearizable",
        by_account.len(),
        anomalies.len()
    );
    CheckResult::from_findings(NAME, summary, anomalies, unknowns)
}

/// Keys of `account` that the state after healing shows never applied.
fn undecided_keys(
    account: &str,
    operations: &[&Operation],
    final_state: &FinalState,
) -> HashSet<ClientKey> {
    let mut undecided = HashSet::new();
    let final_grants = match final_state.accounts.get(account) {
        Some(Ok(snapshot)) => Some(&snapshot.grants),
        _ => None,
    };
    for operation in operations {
        match &operation.request {
            Request::Debit { key, .. } => {
                let lookup = final_state
                    .debit_lookups
                    .get(&(account.to_owned(), key.clone()));
                if lookup == Some(&Lookup::NotDecided) {
                    undecided.insert(ClientKey::Debit(key.clone()));
                }
            }
            Request::Grant { grant_id, .. }
                if final_grants.is_some_and(|grants| !grants.contains_key(grant_id)) =>
            {
                undecided.insert(ClientKey::Grant(grant_id.clone()));
            }
            _ => {}
        }
    }
    undecided
}

/// Whether one account's operations are linearizable.
pub fn check_account(
    operations: &[&Operation],
    overdraft_limit: u64,
    undecided_keys: &HashSet<ClientKey>,
) -> SearchResult {
    let prepared = prepare(operations, undecided_keys);
    search(
        &prepared,
        i64::try_from(overdraft_limit).unwrap_or(i64::MAX),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchResult {
    Linearizable,
    NotLinearizable(Box<Failure>),
    Unknown { steps: u64 },
}

/// Where the deepest attempt got stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Operations (as given to the search) placed by the deepest attempt, in order.
    pub linearized: Vec<usize>,
    /// The model after them.
    pub state: String,
    /// Indexes (into the given operations) of the operations that could come next after the
    /// deepest ordering, none of which the model allows there.
    pub unplaced: Vec<usize>,
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Call {
    Debit { key: u32, amount: u64 },
    Grant { key: u32, amount: u64 },
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    /// An `info`: any answer, or none.
    Anything,
    Debit {
        accepted: bool,
        amount: Option<u64>,
        available: Option<i64>,
        replayed: bool,
    },
    Grant {
        replayed: bool,
    },
    Read {
        available: i64,
        reserved: u64,
        consumed: u64,
        granted: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Decision {
    DebitAccepted { available_after: i64 },
    DebitRejected,
    Granted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct AccountModel {
    available: i64,
    consumed: u64,
    granted: u64,
    /// Decisions of keys that still have operations to place (others are pruned: nothing can
    /// observe them any more, and pruning keeps equal states equal for the memo).
    decided: BTreeMap<u32, Decision>,
}

impl AccountModel {
    fn describe(&self) -> String {
        format!(
            "available={} consumed={} granted={}",
            self.available, self.consumed, self.granted
        )
    }

    /// The state after `call` if its answer can be `expected`, else `None`.
    fn step(&self, call: Call, expected: &Expected, overdraft_limit: i64) -> Option<AccountModel> {
        match call {
            Call::Read => match expected {
                Expected::Read {
                    available,
                    reserved,
                    consumed,
                    granted,
                } => (*available == self.available
                    && *reserved == 0
                    && *consumed == self.consumed
                    && *granted == self.granted)
                    .then(|| self.clone()),
                _ => Some(self.clone()),
            },
            Call::Debit { key, amount } => {
                if let Some(decision) = self.decided.get(&key) {
                    return replay_matches(*decision, amount, expected).then(|| self.clone());
                }
                let amount_signed = i64::try_from(amount).ok()?;
                let mut next = self.clone();
                let decision = if self.available - amount_signed >= -overdraft_limit {
                    next.available -= amount_signed;
                    next.consumed += amount;
                    Decision::DebitAccepted {
                        available_after: next.available,
                    }
                } else {
                    Decision::DebitRejected
                };
                next.decided.insert(key, decision);
                let matches = match expected {
                    Expected::Anything => true,
                    Expected::Debit {
                        accepted,
                        amount: answered_amount,
                        available,
                        replayed,
                    } => {
                        !replayed
                            && match decision {
                                Decision::DebitAccepted { available_after } => {
                                    *accepted
                                        && *answered_amount == Some(amount)
                                        && *available == Some(available_after)
                                }
                                _ => !accepted,
                            }
                    }
                    _ => false,
                };
                matches.then_some(next)
            }
            Call::Grant { key, amount } => {
                if self.decided.contains_key(&key) {
                    return match expected {
                        Expected::Anything | Expected::Grant { replayed: true } => {
                            Some(self.clone())
                        }
                        _ => None,
                    };
                }
                let mut next = self.clone();
                next.available += i64::try_from(amount).ok()?;
                next.granted += amount;
                next.decided.insert(key, Decision::Granted);
                match expected {
                    Expected::Anything | Expected::Grant { replayed: false } => Some(next),
                    _ => None,
                }
            }
        }
    }
}

fn replay_matches(decision: Decision, amount: u64, expected: &Expected) -> bool {
    match expected {
        Expected::Anything => true,
        Expected::Debit {
            accepted,
            amount: answered_amount,
            available,
            replayed,
        } => {
            *replayed
                && match decision {
                    Decision::DebitAccepted { available_after } => {
                        *accepted
                            && *answered_amount == Some(amount)
                            && *available == Some(available_after)
                    }
                    Decision::DebitRejected => !accepted,
                    Decision::Granted => false,
                }
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Preparation: from recorded operations to model operations.

#[derive(Clone, Debug)]
struct ModelOperation {
    call: Call,
    expected: Expected,
    invoke_us: u64,
    /// `None`: pending forever (an unbounded `info`).
    complete_us: Option<u64>,
    /// Index into the operations given to [`prepare`].
    source: usize,
}

fn prepare(operations: &[&Operation], undecided_keys: &HashSet<ClientKey>) -> Vec<ModelOperation> {
    let mut key_numbers: HashMap<ClientKey, u32> = HashMap::new();
    // The earliest completion of an `ok` per key: the key is decided by then.
    let mut decided_by: HashMap<ClientKey, u64> = HashMap::new();
    // The `info` attempts of each key are interchangeable (any answer, at most one applies), so
    // they are merged into one: from the earliest invocation among them. Without this, the
    // search would try every one of a key's many timed-out attempts at every place.
    let mut first_info: HashMap<ClientKey, usize> = HashMap::new();
    for (position, operation) in operations.iter().enumerate() {
        let Some(key) = operation.request.client_key() else {
            continue;
        };
        match (&operation.outcome, operation.complete_us) {
            (Outcome::Ok(_), Some(complete)) => {
                let entry = decided_by.entry(key).or_insert(complete);
                *entry = (*entry).min(complete);
            }
            (Outcome::Info(_), _) => {
                let entry = first_info.entry(key).or_insert(position);
                if operation.invoke_us < operations[*entry].invoke_us {
                    *entry = position;
                }
            }
            _ => {}
        }
    }
    let mut prepared = Vec::new();
    for (source, operation) in operations.iter().enumerate() {
        let mut number_of = |key: ClientKey| {
            let next = key_numbers.len() as u32;
            *key_numbers.entry(key).or_insert(next)
        };
        let call = match &operation.request {
            Request::Debit { key, amount } => Call::Debit {
                key: number_of(ClientKey::Debit(key.clone())),
                amount: *amount,
            },
            Request::Grant { grant_id, amount } => Call::Grant {
                key: number_of(ClientKey::Grant(grant_id.clone())),
                amount: *amount,
            },
            Request::Read => Call::Read,
            // Reservations are not part of this model (the linear workload does not use them).
            _ => continue,
        };
        let (expected, complete_us) = match &operation.outcome {
            Outcome::Fail(_) => continue,
            Outcome::Ok(answer) => (expected_of(answer), operation.complete_us),
            Outcome::Info(_) => {
                let Some(key) = operation.request.client_key() else {
                    // A read without an answer constrains nothing and changes nothing.
                    continue;
                };
                // The lookup after healing (linearizable, after every operation of the
                // history) found the key undecided: no attempt applied before any operation
                // of the history ended, which is the same as never.
                if undecided_keys.contains(&key) || first_info.get(&key) != Some(&source) {
                    continue;
                }
                match decided_by.get(&key).copied() {
                    // Decided before this attempt began: it can only be a replay.
                    Some(decided) if decided < operation.invoke_us => continue,
                    Some(decided) => (Expected::Anything, Some(decided)),
                    None => (Expected::Anything, None),
                }
            }
        };
        prepared.push(ModelOperation {
            call,
            expected,
            invoke_us: operation.invoke_us,
            complete_us,
            source,
        });
    }
    prepared
}

fn expected_of(answer: &Answer) -> Expected {
    match answer {
        Answer::Debit {
            accepted,
            amount,
            available,
            replayed,
            ..
        } => Expected::Debit {
            accepted: *accepted,
            amount: *amount,
            available: *available,
            replayed: *replayed,
        },
        Answer::Grant { replayed } => Expected::Grant {
            replayed: *replayed,
        },
        Answer::Read(snapshot) => Expected::Read {
            available: snapshot.available,
            reserved: snapshot.reserved,
            consumed: snapshot.consumed,
            granted: snapshot.granted,
        },
        Answer::Reservation { .. } => Expected::Anything,
    }
}

// ---------------------------------------------------------------------------------------------
// The search.

const NONE: usize = usize::MAX;

/// The call/return entries as a doubly linked list that operations are lifted out of.
struct EntryList {
    /// Per entry: the operation, and whether it is the call (else the return).
    operation: Vec<usize>,
    is_call: Vec<bool>,
    /// Per call entry: its return entry.
    partner: Vec<usize>,
    next: Vec<usize>,
    previous: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new(operations: &[ModelOperation]) -> EntryList {
        // (time, returns after calls at the same instant, operation, is_call): equal times
        // count as concurrent, the generous reading of the clock's resolution.
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(operations.len() * 2);
        for (index, operation) in operations.iter().enumerate() {
            order.push((operation.invoke_us, 0, index, true));
            order.push((operation.complete_us.unwrap_or(u64::MAX), 1, index, false));
        }
        order.sort();
        let count = order.len();
        let mut list = EntryList {
            operation: vec![0; count],
            is_call: vec![false; count],
            partner: vec![NONE; count],
            next: vec![NONE; count],
            previous: vec![NONE; count],
            head: if count == 0 { NONE } else { 0 },
        };
        let mut call_entry = vec![NONE; operations.len()];
        for (position, (_, _, operation, is_call)) in order.into_iter().enumerate() {
            list.operation[position] = operation;
            list.is_call[position] = is_call;
            list.next[position] = if position + 1 < count {
                position + 1
            } else {
                NONE
            };
            list.previous[position] = if position == 0 { NONE } else { position - 1 };
            if is_call {
                call_entry[operation] = position;
            } else {
                list.partner[call_entry[operation]] = position;
            }
        }
        list
    }

    fn unlink(&mut self, entry: usize) {
        let (previous, next) = (self.previous[entry], self.next[entry]);
        if previous == NONE {
            self.head = next;
        } else {
            self.next[previous] = next;
        }
        if next != NONE {
            self.previous[next] = previous;
        }
    }

    fn relink(&mut self, entry: usize) {
        let (previous, next) = (self.previous[entry], self.next[entry]);
        if previous == NONE {
            self.head = entry;
        } else {
            self.next[previous] = entry;
        }
        if next != NONE {
            self.previous[next] = entry;
        }
    }

    /// Removes a call entry and its return (the operation is placed).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.partner[call]);
    }

    /// Undoes [`EntryList::lift`] (in reverse order, as the links require).
    fn unlift(&mut self, call: usize) {
        self.relink(self.partner[call]);
        self.relink(call);
    }
}

fn key_of(call: Call) -> Option<u32> {
    match call {
        Call::Debit { key, .. } | Call::Grant { key, .. } => Some(key),
        Call::Read => None,
    }
}

/// Lowe's memo keeps a 128-bit digest of (operations placed, model state) instead of the pair.
/// The pair held a bitset over every operation of the account per entry, so the memo grew with
/// the square of the history's length. (It was not the whole of the harness's memory growth in
/// long runs: see `jepsen-tests/RESULTS.md`, session 10.) A digest collision can only make the
/// search skip a configuration it has not explored, so at worst it reports a linearizable
/// history as not linearizable (never the reverse), with a chance of about 2^-128 per pair of
/// entries.
fn memo_key(placed: &[u64], state: &AccountModel) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    placed.hash(&mut hasher);
    state.hash(&mut hasher);
    hasher.digest128()
}

fn search(operations: &[ModelOperation], overdraft_limit: i64) -> SearchResult {
    let mut list = EntryList::new(operations);
    // Operations of each key not placed yet, for pruning decided keys.
    let mut remaining_per_key: HashMap<u32, usize> = HashMap::new();
    for operation in operations {
        if let Some(key) = key_of(operation.call) {
            *remaining_per_key.entry(key).or_default() += 1;
        }
    }
    let words = operations.len().div_ceil(64).max(1);
    let mut placed = vec![0_u64; words];
    let mut memo: HashSet<u128> = HashSet::new();
    let mut state = AccountModel::default();
    // (call entry, state before it)
    let mut stack: Vec<(usize, AccountModel)> = Vec::new();
    let mut deepest: (usize, Vec<usize>, AccountModel) = (0, Vec::new(), AccountModel::default());
    let mut steps = 0_u64;
    let mut entry = list.head;
    while list.head != NONE {
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return SearchResult::Unknown { steps };
        }
        if entry != NONE && list.is_call[entry] {
            let index = list.operation[entry];
            let operation = &operations[index];
            if let Some(mut next) = state.step(operation.call, &operation.expected, overdraft_limit)
            {
                placed[index / 64] |= 1 << (index % 64);
                if let Some(key) = key_of(operation.call) {
                    let remaining = remaining_per_key.entry(key).or_default();
                    *remaining -= 1;
                    if *remaining == 0 {
                        next.decided.remove(&key);
                    }
                }
                if memo.insert(memo_key(&placed, &next)) {
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    list.lift(entry);
                    if stack.len() > deepest.0 {
                        let order = stack
                            .iter()
                            .map(|(call, _)| operations[list.operation[*call]].source)
                            .collect();
                        deepest = (stack.len(), order, state.clone());
                    }
                    entry = list.head;
                    continue;
                }
                // Seen before: undo the bookkeeping and try the next entry.
                placed[index / 64] &= !(1 << (index % 64));
                if let Some(key) = key_of(operation.call) {
                    *remaining_per_key.entry(key).or_default() += 1;
                }
            }
            entry = list.next[entry];
        } else {
            // A return (or the end): the operation it closes cannot be placed later; backtrack.
            let Some((call, previous_state)) = stack.pop() else {
                // The candidates for the next place after the deepest ordering: unplaced
                // operations invoked before the first unplaced one completed.
                let placed_sources: HashSet<usize> = deepest.1.iter().copied().collect();
                let unplaced: Vec<&ModelOperation> = operations
                    .iter()
                    .filter(|operation| !placed_sources.contains(&operation.source))
                    .collect();
                let first_completion = unplaced
                    .iter()
                    .map(|operation| operation.complete_us.unwrap_or(u64::MAX))
                    .min()
                    .unwrap_or(u64::MAX);
                let unplaced = unplaced
                    .iter()
                    .filter(|operation| operation.invoke_us <= first_completion)
                    .map(|operation| operation.source)
                    .collect();
                return SearchResult::NotLinearizable(Box::new(Failure {
                    linearized: deepest.1,
                    state: deepest.2.describe(),
                    unplaced,
                }));
            };
            let index = list.operation[call];
            state = previous_state;
            placed[index / 64] &= !(1 << (index % 64));
            if let Some(key) = key_of(operations[index].call) {
                *remaining_per_key.entry(key).or_default() += 1;
            }
            list.unlift(call);
            entry = list.next[call];
        }
    }
    SearchResult::Linearizable
}

// ---------------------------------------------------------------------------------------------
// Explaining a failure.

/// The operations of the prefix up to event `cut` (exclusive): later completions become `info`.
fn prefix(operations: &[&Operation], cut: u64) -> Vec<Operation> {
    operations
        .iter()
        .filter(|operation| operation.invoke_index < cut)
        .map(|operation| {
            let mut operation = (*operation).clone();
            if operation.complete_index.is_none_or(|index| index >= cut) {
                operation.complete_index = None;
                operation.complete_us = None;
                operation.outcome = Outcome::Info("pending at the cut".to_owned());
            }
            operation
        })
        .collect()
}

/// Finds the smallest failing prefix and describes it.
fn explain_failure(
    account: &str,
    operations: &[&Operation],
    overdraft_limit: u64,
    undecided: &HashSet<ClientKey>,
) -> String {
    let mut cuts: Vec<u64> = operations
        .iter()
        .filter_map(|operation| operation.complete_index.map(|index| index + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    // Bisection for the first cut whose prefix fails; the full history is known to fail.
    let fails = |cut: u64| {
        let owned = prefix(operations, cut);
        let borrowed: Vec<&Operation> = owned.iter().collect();
        matches!(
            check_account(&borrowed, overdraft_limit, undecided),
            SearchResult::NotLinearizable(_)
        )
    };
    let (mut low, mut high) = (0_usize, cuts.len());
    while low < high {
        let middle = (low + high) / 2;
        if fails(cuts[middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let cut = cuts.get(low).copied().unwrap_or(u64::MAX);
    let owned = prefix(operations, cut);
    let borrowed: Vec<&Operation> = owned.iter().collect();
    let mut text = format!(
        "{account} (overdraft limit {overdraft_limit}) is not linearizable; smallest failing \
         prefix: history events before #{cut}, {} of the account's {} operations.",
        owned.len(),
        operations.len()
    );
    if let Some(last) = owned
        .iter()
        .find(|operation| operation.complete_index == Some(cut.saturating_sub(1)))
    {
        text.push_str(&format!(
            "\n  the prefix fails once this completes: {}",
            last.describe()
        ));
    }
    if let SearchResult::NotLinearizable(failure) =
        check_account(&borrowed, overdraft_limit, undecided)
    {
        let shown = failure.linearized.len().saturating_sub(8);
        text.push_str(&format!(
            "\n  the longest valid ordering places {} operations, ending in state {}; its last ones:",
            failure.linearized.len(),
            failure.state
        ));
        for source in &failure.linearized[shown..] {
            text.push_str(&format!("\n    {}", borrowed[*source].describe()));
        }
        text.push_str("\n  operations that no valid ordering can place next (each contradicts the state above):");
        for source in failure.unplaced.iter().take(12) {
            text.push_str(&format!("\n    {}", borrowed[*source].describe()));
        }
        if failure.unplaced.len() > 12 {
            text.push_str(&format!(
                "\n    ... and {} more",
                failure.unplaced.len() - 12
            ));
        }
    }
    text
}

/// Verdict helper for callers that only need the kind.
pub fn verdict_of(result: &SearchResult) -> Verdict {
    match result {
        SearchResult::Linearizable => Verdict::Valid,
        SearchResult::NotLinearizable(_) => Verdict::Invalid,
        SearchResult::Unknown { .. } => Verdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;

    fn verdict(operations: &[Operation], overdraft: u64) -> Verdict {
        let borrowed: Vec<&Operation> = operations.iter().collect();
        verdict_of(&check_account(&borrowed, overdraft, &HashSet::new()))
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_is_linearizable() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(
                1,
                "a",
                debit("k1", 30),
                20,
                Some(30),
                accepted(30, 70, false),
            )
            .op(1, "a", debit("k2", 80), 40, Some(50), rejected(false))
            .op(1, "a", Request::Read, 60, Some(70), read(70, 30, 100))
            .op(
                1,
                "a",
                debit("k1", 30),
                80,
                Some(90),
                accepted(30, 70, true),
            )
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Valid);
    }

    #[test]
    fn concurrent_debits_may_apply_in_either_order() {
        // Both answers are only possible if k2 applied before k1, although k1 was invoked first.
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(
                1,
                "a",
                debit("k1", 30),
                20,
                Some(60),
                accepted(30, 50, false),
            )
            .op(
                2,
                "a",
                debit("k2", 20),
                25,
                Some(55),
                accepted(20, 80, false),
            )
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Valid);
    }

    #[test]
    fn a_stale_read_is_not_linearizable() {
        // The debit completed before the read began, yet the read shows the balance before it.
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(
                1,
                "a",
                debit("k1", 30),
                20,
                Some(30),
                accepted(30, 70, false),
            )
            .op(2, "a", Request::Read, 40, Some(50), read(100, 0, 100))
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Invalid);
        let limits: BTreeMap<String, u64> = [("a".to_owned(), 0)].into_iter().collect();
        let result = check(&history, &limits, &FinalState::default());
        assert_eq!(result.verdict, Verdict::Invalid);
        let text = result.details.join("\n");
        assert!(text.contains("smallest failing prefix"), "{text}");
        assert!(text.contains("read"), "{text}");
    }

    #[test]
    fn a_lost_acknowledged_debit_is_not_linearizable() {
        // An acknowledged debit, then a read (after it) that does not include it.
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 50), 0, Some(10), granted(false))
            .op(
                1,
                "a",
                debit("k1", 10),
                20,
                Some(30),
                accepted(10, 40, false),
            )
            .op(1, "a", debit("k2", 5), 40, Some(50), accepted(5, 45, false))
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Invalid);
    }

    #[test]
    fn an_info_debit_may_apply_late_or_never() {
        let base = || {
            let mut builder = HistoryBuilder::new();
            builder
                .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
                .op(1, "a", debit("k1", 30), 20, None, info());
            builder
        };
        // It had not applied at the first read but had at the second: allowed.
        let late = base()
            .op(2, "a", Request::Read, 40, Some(50), read(100, 0, 100))
            .op(2, "a", Request::Read, 60, Some(70), read(70, 30, 100))
            .build();
        assert_eq!(verdict(&late, 0), Verdict::Valid);
        // Never applied: allowed.
        let never = base()
            .op(2, "a", Request::Read, 40, Some(50), read(100, 0, 100))
            .build();
        assert_eq!(verdict(&never, 0), Verdict::Valid);
        // Applied, then un-applied: not allowed.
        let flicker = base()
            .op(2, "a", Request::Read, 40, Some(50), read(70, 30, 100))
            .op(2, "a", Request::Read, 60, Some(70), read(100, 0, 100))
            .build();
        assert_eq!(verdict(&flicker, 0), Verdict::Invalid);
    }

    #[test]
    fn a_debit_applied_twice_is_not_linearizable() {
        // The retry after a timeout claims to be fresh, with a second drawdown.
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(1, "a", debit("k1", 30), 20, Some(40), info())
            .op(
                1,
                "a",
                debit("k1", 30),
                50,
                Some(60),
                accepted(30, 40, false),
            )
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Invalid);
    }

    #[test]
    fn many_timed_out_attempts_of_one_key_count_as_one_operation() {
        // 60 attempts of two keys that all timed out, interleaved with reads that show k1
        // applied once (and k2 never): without merging the attempts, the search would try
        // every attempt at every place.
        let mut builder = HistoryBuilder::new();
        builder.op(0, "a", grant("g1", 100), 0, Some(10), granted(false));
        for attempt in 0..30_u64 {
            let time = 20 + attempt * 10;
            builder.op(1, "a", debit("k1", 30), time, Some(time + 5), info());
            builder.op(3, "a", debit("k2", 50), time, Some(time + 5), info());
            let shown = if attempt < 15 {
                read(100, 0, 100)
            } else {
                read(70, 30, 100)
            };
            builder.op(2, "a", Request::Read, time + 6, Some(time + 8), shown);
        }
        let history = builder.build();
        assert_eq!(verdict(&history, 0), Verdict::Valid);
    }

    #[test]
    fn a_key_that_never_applied_after_healing_is_dropped() {
        // k1 timed out; the lookup after healing did not find it. A read that shows it applied
        // is then impossible.
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(1, "a", debit("k1", 30), 20, None, info())
            .op(2, "a", Request::Read, 40, Some(50), read(70, 30, 100))
            .build();
        let borrowed: Vec<&Operation> = history.iter().collect();
        let undecided: HashSet<ClientKey> =
            [ClientKey::Debit("k1".to_owned())].into_iter().collect();
        assert_eq!(
            verdict_of(&check_account(&borrowed, 0, &undecided)),
            Verdict::Invalid
        );
        assert_eq!(verdict(&history, 0), Verdict::Valid);
    }

    #[test]
    fn overdraft_follows_the_limit() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 10), 0, Some(10), granted(false))
            .op(
                1,
                "a",
                debit("k1", 30),
                20,
                Some(30),
                accepted(30, -20, false),
            )
            .build();
        assert_eq!(verdict(&history, 50), Verdict::Valid);
        assert_eq!(verdict(&history, 0), Verdict::Invalid);
    }

    #[test]
    fn failed_operations_have_no_effect() {
        let history = HistoryBuilder::new()
            .op(0, "a", grant("g1", 100), 0, Some(10), granted(false))
            .op(1, "a", debit("k1", 30), 20, Some(30), fail())
            .op(1, "a", Request::Read, 40, Some(50), read(100, 0, 100))
            .build();
        assert_eq!(verdict(&history, 0), Verdict::Valid);
    }

    /// A seeded random sequential history generated from an independent reference (a plain
    /// balance and a map of decided keys) is always linearizable; flipping one read's balance
    /// makes it not. Prints the seed so that a failure can be replayed.
    #[test]
    fn random_sequential_histories_from_a_reference_model() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("LINEARIZABILITY_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(20_251_125);
        eprintln!("random_sequential_histories_from_a_reference_model seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..30 {
            let mut builder = HistoryBuilder::new();
            let (mut available, mut consumed, mut granted_total) = (0_i64, 0_u64, 0_u64);
            let mut time = 0_u64;
            let mut reads = Vec::new();
            for step in 0..40 {
                time += 10;
                match rng.gen_range(0..3) {
                    0 => {
                        let amount = rng.gen_range(1..50);
                        available += amount as i64;
                        granted_total += amount;
                        builder.op(
                            1,
                            "a",
                            grant(&format!("g{step}"), amount),
                            time,
                            Some(time + 5),
                            granted(false),
                        );
                    }
                    1 => {
                        let amount = rng.gen_range(1..40);
                        let outcome = if available >= amount as i64 {
                            available -= amount as i64;
                            consumed += amount;
                            accepted(amount, available, false)
                        } else {
                            rejected(false)
                        };
                        builder.op(
                            1,
                            "a",
                            debit(&format!("k{step}"), amount),
                            time,
                            Some(time + 5),
                            outcome,
                        );
                    }
                    _ => {
                        reads.push(step);
                        builder.op(
                            1,
                            "a",
                            Request::Read,
                            time,
                            Some(time + 5),
                            read(available, consumed, granted_total),
                        );
                    }
                }
            }
            let history = builder.build();
            assert_eq!(verdict(&history, 0), Verdict::Valid, "seed {seed}");
            let Some(position) = history
                .iter()
                .position(|operation| operation.request == Request::Read)
            else {
                continue;
            };
            let mut corrupted = history.clone();
            if let Outcome::Ok(Answer::Read(snapshot)) = &mut corrupted[position].outcome {
                snapshot.available += 1;
            }
            assert_eq!(verdict(&corrupted, 0), Verdict::Invalid, "seed {seed}");
        }
    }
}

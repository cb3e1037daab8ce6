//! The ledger of one shard: accounts, grants, debit and grant records, and `apply`.
//!
//! **Time.** The only clock is the `timestamp_ms` the leader stamped on the log entry. Effective
//! time never goes backwards: a command is applied at `max(timestamp_ms, last applied stamp)`.
//!
//! **Lazy settlement.** Grants expire and future-effective grants start repaying overage at
//! instants when no command may be applied. Rather than needing a command at each of those
//! instants, an account is *settled* before every change and inside every `view`: settlement
//! replays the instants that passed since the account was last touched, in time order (see
//! `Account::settle`). So the state of an account at an instant does not depend on how often it
//! was touched before.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::types::*;

/// Totals (`granted`, `consumed`) are kept at most this large, so that every balance fits `i64`.
const TOTAL_MAX: u64 = i64::MAX as u64;

/// The keys an `apply` changed, so that the storage layer can persist exactly those in the same
/// write batch as `last_applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Accounts whose state changed (created, granted, debited, grants expired).
    pub accounts: BTreeSet<String>,
    /// Newly decided debit idempotency records, as (account id, idempotency key), in the order
    /// they were decided. A key appears at most once: a decided key is never decided again.
    pub debit_records: Vec<(String, String)>,
    /// Newly recorded grant rejections, as (account id, grant id), in the order they were
    /// decided. A grant id appears at most once, for the same reason.
    pub grant_records: Vec<(String, String)>,
}

impl ChangeSet {
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.debit_records.clear();
        self.grant_records.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.debit_records.is_empty() && self.grant_records.is_empty()
    }

    fn mark_account(&mut self, account_id: &str) {
        // Most batches touch an account many times: only the first touch allocates.
        if !self.accounts.contains(account_id) {
            self.accounts.insert(account_id.to_owned());
        }
    }
}

/// An account as a reader sees it at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    /// Drawable credits now (effective, unexpired grants) minus overage; may be negative down to
    /// `-overdraft_limit`.
    pub available: i64,
    pub consumed: u64,
    pub expired: u64,
    pub overdraft_limit: u64,
    /// Grants that have not expired at the instant of the view (exhausted and not yet effective
    /// ones included), in draw-down order.
    pub grants: Vec<Grant>,
}

/// The state of one shard's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    /// Every debit decision, keyed by (account id, idempotency key), including rejections and
    /// decisions about accounts that did not exist.
    debit_records: BTreeMap<(String, String), DebitRecord>,
    /// Every grant id rejected for a reason of state or time, keyed by (account id, grant id),
    /// also for accounts that did not exist. An accepted grant id is the grant on its account
    /// instead; a grant id is never both.
    grant_records: BTreeMap<(String, String), GrantRecord>,
    /// The latest time stamp applied: effective time never goes backwards, even if a new leader's
    /// clock is behind the old one's.
    last_timestamp_ms: u64,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Rebuilds a ledger from persisted parts (used by storage when a node restarts or installs a
    /// snapshot): the parts that `accounts()`, `debit_records()`, `grant_records()` and
    /// `last_timestamp_ms()` return.
    ///
    /// # Panics
    /// When the parts break an invariant (an account given twice, conservation, a grant id both
    /// accepted and rejected): persisted state that is not a state this machine can reach must
    /// stop the node, not be served.
    pub fn restore(
        accounts: impl IntoIterator<Item = Account>,
        debit_records: impl IntoIterator<Item = ((String, String), DebitRecord)>,
        grant_records: impl IntoIterator<Item = ((String, String), GrantRecord)>,
        last_timestamp_ms: u64,
    ) -> Ledger {
        let mut accounts_by_id = BTreeMap::new();
        for account in accounts {
            account.assert_invariants();
            let account_id = account.account_id.clone();
            let previous = accounts_by_id.insert(account_id, account);
            assert!(
                previous.is_none(),
                "restore: account {:?} given twice",
                previous.map(|account| account.account_id)
            );
        }
        let grant_records: BTreeMap<(String, String), GrantRecord> =
            grant_records.into_iter().collect();
        for (account_id, grant_id) in grant_records.keys() {
            if let Some(account) = accounts_by_id.get(account_id) {
                assert!(
                    account.grant(grant_id).is_none(),
                    "restore: grant {grant_id:?} of account {account_id:?} is both accepted and \
                     rejected"
                );
            }
        }
        Ledger {
            accounts: accounts_by_id,
            debit_records: debit_records.into_iter().collect(),
            grant_records,
            last_timestamp_ms,
        }
    }

    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.get(account_id)
    }

    /// Accounts in account id order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The decided outcome of a debit key, if it was ever decided. Does not allocate.
    pub fn debit_record(&self, account_id: &str, idempotency_key: &str) -> Option<&DebitRecord> {
        self.debit_records
            .get(&(account_id, idempotency_key) as &dyn RecordKey)
    }

    /// Debit records in (account id, idempotency key) order.
    pub fn debit_records(&self) -> impl Iterator<Item = (&(String, String), &DebitRecord)> {
        self.debit_records.iter()
    }

    /// The recorded rejection of a grant id, if its grant was rejected for a reason of state or
    /// time. Does not allocate.
    pub fn grant_record(&self, account_id: &str, grant_id: &str) -> Option<&GrantRecord> {
        self.grant_records
            .get(&(account_id, grant_id) as &dyn RecordKey)
    }

    /// Grant records in (account id, grant id) order.
    pub fn grant_records(&self) -> impl Iterator<Item = (&(String, String), &GrantRecord)> {
        self.grant_records.iter()
    }

    pub fn last_timestamp_ms(&self) -> u64 {
        self.last_timestamp_ms
    }

    /// The account as seen at `now_ms`, or at the last applied stamp if that is later: grants
    /// expired by then are left out and count as expired, overage is repaid by grants effective
    /// by then, exactly as the next command at that instant would see it.
    pub fn view(&self, account_id: &str, now_ms: u64) -> Option<AccountView> {
        let mut account = self.accounts.get(account_id)?.clone();
        let now_ms = now_ms.max(self.last_timestamp_ms);
        account.settle(now_ms);
        let available = account.available(now_ms);
        let mut grants: Vec<Grant> = account
            .grants
            .into_iter()
            .filter(|grant| !grant.expired)
            .collect();
        grants.sort_by(draw_order);
        Some(AccountView {
            account_id: account.account_id,
            available,
            consumed: account.consumed,
            expired: account.expired,
            overdraft_limit: account.overdraft_limit,
            grants,
        })
    }

    /// Applies one command at the leader's time stamp `timestamp_ms` and returns its outcome.
    /// Keys that changed are added to `changes`.
    ///
    /// # Panics
    /// When an invariant of the touched account breaks (conservation, no overspend): a replica
    /// in an unknown state must stop rather than answer.
    pub fn apply(
        &mut self,
        command: &Command,
        timestamp_ms: u64,
        changes: &mut ChangeSet,
    ) -> Outcome {
        self.last_timestamp_ms = self.last_timestamp_ms.max(timestamp_ms);
        let now_ms = self.last_timestamp_ms;
        let outcome = match command {
            Command::CreateAccount {
                account_id,
                overdraft_limit,
            } => self.create_account(account_id, *overdraft_limit, changes),
            Command::Grant(grant) => self.grant(grant, now_ms, changes),
            Command::Debit {
                account_id,
                idempotency_key,
                amount,
            } => self.debit(account_id, idempotency_key, *amount, now_ms, changes),
        };
        if let Some(account) = self.accounts.get(command.account_id()) {
            account.assert_invariants();
        }
        outcome
    }

    fn create_account(
        &mut self,
        account_id: &str,
        overdraft_limit: u64,
        changes: &mut ChangeSet,
    ) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        if overdraft_limit > AMOUNT_MAX {
            return rejected(Rejection::InvalidAmount);
        }
        if let Some(existing) = self.accounts.get(account_id) {
            return if existing.overdraft_limit == overdraft_limit {
                replayed(Accepted::AccountExists)
            } else {
                rejected(Rejection::AccountConflict)
            };
        }
        self.accounts.insert(
            account_id.to_owned(),
            Account {
                account_id: account_id.to_owned(),
                overdraft_limit,
                grants: Vec::new(),
                granted: 0,
                consumed: 0,
                expired: 0,
                overage: 0,
            },
        );
        changes.mark_account(account_id);
        accepted(Accepted::AccountCreated)
    }

    /// Decides a grant id. Which rejections are recorded follows one rule, the one debits follow:
    /// a rejection that depends only on the command is not recorded (a retry fails the same way
    /// without a record, nothing was applied, and the id stays free for a corrected request); a
    /// rejection that depends on the ledger's state or on time is recorded, because a retry could
    /// otherwise get another answer, and a grant must never apply after a retry of it was told
    /// "rejected". Per code:
    ///
    /// - `invalid_identifier`, `invalid_amount`, `invalid_priority`, and `invalid_expiry` for an
    ///   `expires_at` not after an explicit `effective_at`: the command alone; not recorded.
    /// - `grant_conflict`: not recorded. It answers a request that collides with a grant id that
    ///   is already decided (accepted, or a recorded rejection); the id keeps its first decision.
    /// - `account_not_found`: state (the account may be created later); recorded.
    /// - `invalid_expiry` for an `expires_at` at or before the time of apply: time (the same
    ///   request applied earlier would have been accepted); recorded.
    /// - `amount_overflow`: state (the account's `granted` total). That total never shrinks, so
    ///   a retry would be rejected again anyway, but only a record makes it say it is a replay,
    ///   and the rule stays true if a total ever can shrink.
    ///
    /// A retry is the same request when it carries the same amount, source, priority and
    /// expiry, and an `effective_at` that is absent or the instant the first request was decided
    /// to be effective from (the one it named, or its stamp): one rule for an accepted grant id
    /// and a rejected one, since a client cannot know which of the two it is retrying. Other
    /// parameters under a decided grant id are `grant_conflict`, as other amounts under a
    /// decided debit key are `idempotency_conflict`.
    fn grant(&mut self, command: &GrantCommand, now_ms: u64, changes: &mut ChangeSet) -> Outcome {
        if let Err(rejection) = validate_identifier(&command.account_id)
            .and_then(|()| validate_identifier(&command.grant_id))
        {
            return rejected(rejection);
        }
        if command.amount == 0 || command.amount > AMOUNT_MAX {
            return rejected(Rejection::InvalidAmount);
        }
        if command.priority > PRIORITY_MAX {
            return rejected(Rejection::InvalidPriority);
        }
        if let (Some(effective_at_ms), Some(expires_at_ms)) =
            (command.effective_at_ms, command.expires_at_ms)
        {
            if expires_at_ms <= effective_at_ms {
                return rejected(Rejection::InvalidExpiry);
            }
        }
        // Looked up before the account: a grant id rejected because its account did not exist
        // stays rejected after the account is created.
        if let Some(record) = self.grant_record(&command.account_id, &command.grant_id) {
            let same = is_same_grant_request(
                command,
                record.amount,
                record.source,
                record.priority,
                record.effective_at_ms,
                record.expires_at_ms,
            );
            return if same {
                Outcome {
                    result: Err(record.rejection),
                    replayed: true,
                }
            } else {
                rejected(Rejection::GrantConflict)
            };
        }
        let Some(account) = self.accounts.get_mut(&command.account_id) else {
            return self.record_grant_rejection(
                command,
                Rejection::AccountNotFound,
                now_ms,
                changes,
            );
        };
        if let Some(existing) = account.grant(&command.grant_id) {
            let same = is_same_grant_request(
                command,
                existing.amount,
                existing.source,
                existing.priority,
                existing.effective_at_ms,
                existing.expires_at_ms,
            );
            return if same {
                replayed(Accepted::Granted)
            } else {
                rejected(Rejection::GrantConflict)
            };
        }
        // Checked after the grant id lookups: time moves on, and a late retry of an accepted grant
        // must still be its replay (as a late retry of a rejected one gets its record above). A
        // grant that can never be drawn is a client mistake, decided at this instant.
        if command
            .expires_at_ms
            .is_some_and(|expires_at_ms| expires_at_ms <= now_ms)
        {
            return self.record_grant_rejection(command, Rejection::InvalidExpiry, now_ms, changes);
        }
        let Some(granted) = account
            .granted
            .checked_add(command.amount)
            .filter(|total| *total <= TOTAL_MAX)
        else {
            return self.record_grant_rejection(
                command,
                Rejection::AmountOverflow,
                now_ms,
                changes,
            );
        };
        // Settle before adding, so that the new grant cannot take part in instants before it
        // existed (it could otherwise repay overage at a back-dated `effective_at`).
        account.settle(now_ms);
        account.granted = granted;
        let sequence = account.grants.len() as u64;
        account.grants.push(Grant {
            grant_id: command.grant_id.clone(),
            amount: command.amount,
            remaining: command.amount,
            source: command.source,
            priority: command.priority,
            effective_at_ms: command.effective_at_ms.unwrap_or(now_ms),
            expires_at_ms: command.expires_at_ms,
            sequence,
            expired: false,
        });
        // Overage is repaid first by a later grant, as soon as it is effective.
        account.settle(now_ms);
        changes.mark_account(&command.account_id);
        accepted(Accepted::Granted)
    }

    /// Decides a grant id as rejected, for good (see `grant` for which rejections come here).
    fn record_grant_rejection(
        &mut self,
        command: &GrantCommand,
        rejection: Rejection,
        now_ms: u64,
        changes: &mut ChangeSet,
    ) -> Outcome {
        let record_key = (command.account_id.clone(), command.grant_id.clone());
        assert!(
            self.accounts
                .get(&command.account_id)
                .is_none_or(|account| account.grant(&command.grant_id).is_none()),
            "a rejection was recorded for an accepted grant id"
        );
        changes.grant_records.push(record_key.clone());
        let previous = self.grant_records.insert(
            record_key,
            GrantRecord {
                amount: command.amount,
                source: command.source,
                priority: command.priority,
                effective_at_ms: command.effective_at_ms.unwrap_or(now_ms),
                expires_at_ms: command.expires_at_ms,
                rejection,
                decided_at_ms: now_ms,
            },
        );
        assert!(previous.is_none(), "a grant id was decided twice");
        rejected(rejection)
    }

    fn debit(
        &mut self,
        account_id: &str,
        idempotency_key: &str,
        amount: u64,
        now_ms: u64,
        changes: &mut ChangeSet,
    ) -> Outcome {
        // The checks of the command alone record nothing: their answer does not depend on state,
        // so a retry gets it again anyway, and nothing was applied (the key stays free).
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_identifier(idempotency_key))
        {
            return rejected(rejection);
        }
        if amount == 0 || amount > AMOUNT_MAX {
            return rejected(Rejection::InvalidAmount);
        }
        if let Some(record) = self.debit_record(account_id, idempotency_key) {
            if record.requested_amount != amount {
                return rejected(Rejection::IdempotencyConflict);
            }
            return Outcome {
                result: record.result.clone(),
                replayed: true,
            };
        }
        let result = match self.accounts.get_mut(account_id) {
            None => Err(Rejection::AccountNotFound),
            Some(account) => {
                let settled = account.settle(now_ms);
                let result = account.draw(amount, now_ms);
                if settled || result.is_ok() {
                    changes.mark_account(account_id);
                }
                result
            }
        };
        let record_key = (account_id.to_owned(), idempotency_key.to_owned());
        changes.debit_records.push(record_key.clone());
        let previous = self.debit_records.insert(
            record_key,
            DebitRecord {
                requested_amount: amount,
                result: result.clone(),
                decided_at_ms: now_ms,
            },
        );
        assert!(previous.is_none(), "a debit key was decided twice");
        accepted_or_rejected(result)
    }

    /// A digest of the whole state, equal on replicas at the same applied index. XXH3-128 over a
    /// canonical encoding: maps are walked in key order, every field is written in a fixed
    /// order, strings and lists are prefixed with their length and options and results with a tag,
    /// so that two different states cannot encode to the same bytes.
    pub fn digest(&self) -> u128 {
        let mut hasher = Xxh3::new();
        hash_u64(&mut hasher, self.last_timestamp_ms);
        hash_u64(&mut hasher, self.accounts.len() as u64);
        for account in self.accounts.values() {
            hash_str(&mut hasher, &account.account_id);
            for value in [
                account.overdraft_limit,
                account.granted,
                account.consumed,
                account.expired,
                account.overage,
                account.grants.len() as u64,
            ] {
                hash_u64(&mut hasher, value);
            }
            for grant in &account.grants {
                hash_str(&mut hasher, &grant.grant_id);
                for value in [
                    grant.amount,
                    grant.remaining,
                    u64::from(grant.priority),
                    source_tag(grant.source),
                    grant.effective_at_ms,
                    grant.sequence,
                    u64::from(grant.expired),
                ] {
                    hash_u64(&mut hasher, value);
                }
                hash_option(&mut hasher, grant.expires_at_ms);
            }
        }
        hash_u64(&mut hasher, self.debit_records.len() as u64);
        for ((account_id, key), record) in &self.debit_records {
            hash_str(&mut hasher, account_id);
            hash_str(&mut hasher, key);
            hash_u64(&mut hasher, record.requested_amount);
            hash_u64(&mut hasher, record.decided_at_ms);
            match &record.result {
                Ok(Accepted::AccountCreated) => hasher.update(&[1]),
                Ok(Accepted::AccountExists) => hasher.update(&[2]),
                Ok(Accepted::Granted) => hasher.update(&[3]),
                Ok(Accepted::Debited { amount, available }) => {
                    hasher.update(&[4]);
                    hash_u64(&mut hasher, *amount);
                    hasher.update(&available.to_le_bytes());
                }
                Err(rejection) => {
                    hasher.update(&[5]);
                    hash_rejection(&mut hasher, *rejection);
                }
            }
        }
        hash_u64(&mut hasher, self.grant_records.len() as u64);
        for ((account_id, grant_id), record) in &self.grant_records {
            hash_str(&mut hasher, account_id);
            hash_str(&mut hasher, grant_id);
            for value in [
                record.amount,
                source_tag(record.source),
                u64::from(record.priority),
                record.effective_at_ms,
                record.decided_at_ms,
            ] {
                hash_u64(&mut hasher, value);
            }
            hash_option(&mut hasher, record.expires_at_ms);
            hash_rejection(&mut hasher, record.rejection);
        }
        hasher.digest128()
    }
}

impl Account {
    /// The grant with this id, expired and exhausted ones included.
    fn grant(&self, grant_id: &str) -> Option<&Grant> {
        self.grants.iter().find(|grant| grant.grant_id == grant_id)
    }

    /// Brings the account up to `now_ms` as if time had passed instant by instant: at each
    /// instant, grants whose expiry has come expire first (their remainder moves to `expired`),
    /// then overage is repaid from the grants drawable at that instant, in draw-down order.
    ///
    /// Overage left after a change means nothing was drawable, so only the instants at which a
    /// grant became effective can repay anything, and only those are visited (in time order);
    /// the expiries are then brought up to `now_ms`. Returns whether anything changed.
    fn settle(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        while self.overage > 0 {
            // Each turn either repays the whole overage or empties at least the grant that became
            // effective at `instant_ms` (or expires it), so the loop ends.
            let Some(instant_ms) = self
                .grants
                .iter()
                .filter(|grant| {
                    !grant.expired && grant.remaining > 0 && grant.effective_at_ms <= now_ms
                })
                .map(|grant| grant.effective_at_ms)
                .min()
            else {
                break;
            };
            changed |= self.expire_through(instant_ms);
            let repaid = self.take_from_grants(self.overage, instant_ms);
            self.overage -= repaid;
            changed |= repaid > 0;
        }
        changed |= self.expire_through(now_ms);
        changed
    }

    /// Expires every grant whose `expires_at_ms` is at or before `instant_ms`.
    fn expire_through(&mut self, instant_ms: u64) -> bool {
        let mut changed = false;
        for grant in &mut self.grants {
            if !grant.expired && is_expired_at(grant, instant_ms) {
                self.expired += grant.remaining;
                grant.remaining = 0;
                grant.expired = true;
                changed = true;
            }
        }
        changed
    }

    /// Credits drawable at `now_ms`, before overage.
    fn drawable(&self, now_ms: u64) -> u64 {
        self.grants
            .iter()
            .filter(|grant| is_drawable_at(grant, now_ms))
            .map(|grant| grant.remaining)
            .sum()
    }

    /// Available balance at `now_ms` (meaningful after `settle(now_ms)`).
    fn available(&self, now_ms: u64) -> i64 {
        signed(self.drawable(now_ms)) - signed(self.overage)
    }

    /// Draws `amount` at `now_ms` (after `settle(now_ms)`): from grants in draw-down order, the
    /// rest as overage within the overdraft limit.
    fn draw(&mut self, amount: u64, now_ms: u64) -> Result<Accepted, Rejection> {
        let Some(consumed) = self
            .consumed
            .checked_add(amount)
            .filter(|total| *total <= TOTAL_MAX)
        else {
            return Err(Rejection::AmountOverflow);
        };
        let available = self.available(now_ms);
        // i128: available may be negative, amount and the limit are at most AMOUNT_MAX.
        if i128::from(amount) > i128::from(available) + i128::from(self.overdraft_limit) {
            return Err(Rejection::InsufficientCredits);
        }
        let from_grants = self.take_from_grants(amount, now_ms);
        let overage = self.overage + (amount - from_grants);
        assert!(
            overage <= self.overdraft_limit,
            "account {}: overspend, overage {overage} above limit {}",
            self.account_id,
            self.overdraft_limit
        );
        self.overage = overage;
        self.consumed = consumed;
        let available = self.available(now_ms);
        assert!(
            i128::from(available) >= -i128::from(self.overdraft_limit),
            "account {}: available {available} below the overdraft limit",
            self.account_id
        );
        Ok(Accepted::Debited { amount, available })
    }

    /// Takes up to `amount` from the grants drawable at `now_ms`, in draw-down order; returns
    /// what it took. Allocation free: each turn picks the first grant in draw-down order and
    /// either finishes or empties that grant, and an account has few live grants.
    fn take_from_grants(&mut self, amount: u64, now_ms: u64) -> u64 {
        let mut left_to_take = amount;
        while left_to_take > 0 {
            let Some(index) = self
                .grants
                .iter()
                .enumerate()
                .filter(|(_, grant)| is_drawable_at(grant, now_ms))
                .min_by(|(_, left), (_, right)| draw_order(left, right))
                .map(|(index, _)| index)
            else {
                break;
            };
            let grant = &mut self.grants[index];
            let taken = grant.remaining.min(left_to_take);
            grant.remaining -= taken;
            left_to_take -= taken;
        }
        amount - left_to_take
    }

    /// Conservation, no overspend and bounded totals; on in release builds, after every apply
    /// and on restore.
    fn assert_invariants(&self) {
        let mut held: u128 = 0;
        let mut granted_by_grants: u128 = 0;
        for (index, grant) in self.grants.iter().enumerate() {
            assert!(
                grant.remaining <= grant.amount,
                "account {}: grant {} has more remaining than its amount",
                self.account_id,
                grant.grant_id
            );
            assert!(
                !grant.expired || grant.remaining == 0,
                "account {}: expired grant {} still holds credits",
                self.account_id,
                grant.grant_id
            );
            assert_eq!(
                grant.sequence, index as u64,
                "account {}: grant {} is out of creation order",
                self.account_id, grant.grant_id
            );
            granted_by_grants += u128::from(grant.amount);
            if !grant.expired {
                held += u128::from(grant.remaining);
            }
        }
        assert_eq!(
            granted_by_grants,
            u128::from(self.granted),
            "account {}: granted total does not match its grants",
            self.account_id
        );
        assert_eq!(
            u128::from(self.granted) + u128::from(self.overage),
            held + u128::from(self.consumed) + u128::from(self.expired),
            "account {}: conservation violated",
            self.account_id
        );
        assert!(
            self.overage <= self.overdraft_limit,
            "account {}: overspend, overage {} above limit {}",
            self.account_id,
            self.overage,
            self.overdraft_limit
        );
        assert!(
            self.granted <= TOTAL_MAX && self.consumed <= TOTAL_MAX,
            "account {}: a total is above i64::MAX",
            self.account_id
        );
    }
}

/// Lets the record maps, keyed by an owned `(String, String)`, be searched with a pair of borrowed
/// `&str` without allocating (a map can only be searched by a type its key borrows as). Both
/// sides order exactly as the tuple does, which `Borrow` requires.
trait RecordKey {
    fn parts(&self) -> (&str, &str);
}

impl RecordKey for (String, String) {
    fn parts(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl RecordKey for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn RecordKey + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn RecordKey + 'a) {
        self
    }
}

impl PartialEq for dyn RecordKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn RecordKey + '_ {}

impl PartialOrd for dyn RecordKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn RecordKey + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

fn accepted(accepted: Accepted) -> Outcome {
    Outcome {
        result: Ok(accepted),
        replayed: false,
    }
}

fn replayed(accepted: Accepted) -> Outcome {
    Outcome {
        result: Ok(accepted),
        replayed: true,
    }
}

fn rejected(rejection: Rejection) -> Outcome {
    Outcome {
        result: Err(rejection),
        replayed: false,
    }
}

fn accepted_or_rejected(result: Result<Accepted, Rejection>) -> Outcome {
    Outcome {
        result,
        replayed: false,
    }
}

/// Whether `command` asks for the grant decided with these parameters. A grant decided without
/// `effective_at` was stamped with the time it was decided: a retry without it, or naming that
/// stamp, is the same request.
fn is_same_grant_request(
    command: &GrantCommand,
    amount: u64,
    source: GrantSource,
    priority: u8,
    effective_at_ms: u64,
    expires_at_ms: Option<u64>,
) -> bool {
    command.amount == amount
        && command.source == source
        && command.priority == priority
        && command
            .effective_at_ms
            .is_none_or(|at| at == effective_at_ms)
        && command.expires_at_ms == expires_at_ms
}

/// Grants are drawable in `[effective_at_ms, expires_at_ms)`.
fn is_expired_at(grant: &Grant, now_ms: u64) -> bool {
    grant
        .expires_at_ms
        .is_some_and(|expires_at_ms| expires_at_ms <= now_ms)
}

fn is_drawable_at(grant: &Grant, now_ms: u64) -> bool {
    !grant.expired
        && grant.remaining > 0
        && grant.effective_at_ms <= now_ms
        && !is_expired_at(grant, now_ms)
}

/// Draw-down order: priority (lower first), then earliest expiry (none last), then creation.
fn draw_order(left: &Grant, right: &Grant) -> Ordering {
    let expiry_order = match (left.expires_at_ms, right.expires_at_ms) {
        (Some(left_at), Some(right_at)) => left_at.cmp(&right_at),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    left.priority
        .cmp(&right.priority)
        .then(expiry_order)
        .then(left.sequence.cmp(&right.sequence))
}

fn signed(value: u64) -> i64 {
    // Drawable credits are at most `granted` and overage at most AMOUNT_MAX, both within i64.
    i64::try_from(value).expect("credit totals are bounded by i64::MAX")
}

fn source_tag(source: GrantSource) -> u64 {
    match source {
        GrantSource::Plan => 1,
        GrantSource::Purchase => 2,
        GrantSource::Promo => 3,
        GrantSource::Seat => 4,
        GrantSource::Manual => 5,
    }
}

fn hash_u64(hasher: &mut Xxh3, value: u64) {
    hasher.update(&value.to_le_bytes());
}

fn hash_option(hasher: &mut Xxh3, value: Option<u64>) {
    match value {
        None => hasher.update(&[0]),
        Some(value) => {
            hasher.update(&[1]);
            hash_u64(hasher, value);
        }
    }
}

fn hash_rejection(hasher: &mut Xxh3, rejection: Rejection) {
    hasher.update(&(rejection as u16).to_le_bytes());
}

fn hash_str(hasher: &mut Xxh3, value: &str) {
    hash_u64(hasher, value.len() as u64);
    hasher.update(value.as_bytes());
}

/// Identifiers: 1 to `IDENTIFIER_LENGTH_MAX` bytes of `[A-Za-z0-9._:-]`, so that they are safe
/// in URLs, logs and storage keys.
pub fn validate_identifier(identifier: &str) -> Result<(), Rejection> {
    let valid = !identifier.is_empty()
        && identifier.len() <= IDENTIFIER_LENGTH_MAX
        && identifier
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Rejection::InvalidIdentifier)
    }
}

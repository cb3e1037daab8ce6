//! The ledger of one shard: accounts, grants and idempotency records, and `apply`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::types::*;

/// The keys an `apply` changed, so that the storage layer can persist exactly those in the same
/// write batch as `last_applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Accounts whose state changed (created, granted, debited, grants expired).
    pub accounts: BTreeSet<String>,
    /// Newly decided debit idempotency records, as (account id, idempotency key).
    pub debit_records: Vec<(String, String)>,
}

impl ChangeSet {
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.debit_records.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.debit_records.is_empty()
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
    /// Grants that have not expired at the instant of the view, in draw-down order.
    pub grants: Vec<Grant>,
}

/// The state of one shard's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    /// Every debit decision, keyed by (account id, idempotency key), including rejections and
    /// decisions about accounts that did not exist.
    debit_records: BTreeMap<(String, String), DebitRecord>,
    /// The latest time stamp applied: effective time never goes backwards, even if a new leader's
    /// clock is behind the old one's.
    last_timestamp_ms: u64,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Rebuilds a ledger from persisted parts (used by storage when a node restarts).
    pub fn restore(
        accounts: impl IntoIterator<Item = Account>,
        debit_records: impl IntoIterator<Item = ((String, String), DebitRecord)>,
        last_timestamp_ms: u64,
    ) -> Ledger {
        Ledger {
            accounts: accounts
                .into_iter()
                .map(|account| (account.account_id.clone(), account))
                .collect(),
            debit_records: debit_records.into_iter().collect(),
            last_timestamp_ms,
        }
    }

    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.get(account_id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn debit_record(&self, account_id: &str, idempotency_key: &str) -> Option<&DebitRecord> {
        self.debit_records
            .get(&(account_id.to_owned(), idempotency_key.to_owned()))
    }

    pub fn debit_records(&self) -> impl Iterator<Item = (&(String, String), &DebitRecord)> {
        self.debit_records.iter()
    }

    pub fn last_timestamp_ms(&self) -> u64 {
        self.last_timestamp_ms
    }

    /// The account as seen at `now_ms` (grants expired by then are left out of `available`).
    pub fn view(&self, account_id: &str, now_ms: u64) -> Option<AccountView> {
        let account = self.accounts.get(account_id)?;
        let now_ms = now_ms.max(self.last_timestamp_ms);
        let mut grants: Vec<Grant> = account
            .grants
            .iter()
            .filter(|grant| !grant.expired && !is_expired_at(grant, now_ms))
            .cloned()
            .collect();
        grants.sort_by(draw_order);
        let drawable: u64 = grants
            .iter()
            .filter(|grant| grant.effective_at_ms <= now_ms)
            .map(|grant| grant.remaining)
            .sum();
        Some(AccountView {
            account_id: account.account_id.clone(),
            available: signed(drawable) - signed(account.overage),
            consumed: account.consumed,
            expired: account.expired
                + account
                    .grants
                    .iter()
                    .filter(|grant| !grant.expired && is_expired_at(grant, now_ms))
                    .map(|grant| grant.remaining)
                    .sum::<u64>(),
            overdraft_limit: account.overdraft_limit,
            grants,
        })
    }

    /// Applies one command at the leader's time stamp `timestamp_ms` and returns its outcome.
    /// Keys that changed are added to `changes`.
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
                Outcome {
                    result: Ok(Accepted::AccountExists),
                    replayed: true,
                }
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
        changes.accounts.insert(account_id.to_owned());
        Outcome {
            result: Ok(Accepted::AccountCreated),
            replayed: false,
        }
    }

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
        let effective_at_ms = command.effective_at_ms.unwrap_or(now_ms);
        if let Some(expires_at_ms) = command.expires_at_ms {
            if expires_at_ms <= effective_at_ms {
                return rejected(Rejection::InvalidExpiry);
            }
        }
        let Some(account) = self.accounts.get_mut(&command.account_id) else {
            return rejected(Rejection::AccountNotFound);
        };
        if let Some(existing) = account
            .grants
            .iter()
            .find(|grant| grant.grant_id == command.grant_id)
        {
            let same = existing.amount == command.amount
                && existing.source == command.source
                && existing.priority == command.priority
                && command.effective_at_ms.is_none_or(|at| at == existing.effective_at_ms)
                && existing.expires_at_ms == command.expires_at_ms;
            return if same {
                Outcome {
                    result: Ok(Accepted::Granted),
                    replayed: true,
                }
            } else {
                rejected(Rejection::GrantConflict)
            };
        }
        let Some(granted) = account
            .granted
            .checked_add(command.amount)
            .filter(|total| *total <= i64::MAX as u64)
        else {
            return rejected(Rejection::AmountOverflow);
        };
        account.granted = granted;
        let sequence = account.grants.len() as u64;
        account.grants.push(Grant {
            grant_id: command.grant_id.clone(),
            amount: command.amount,
            remaining: command.amount,
            source: command.source,
            priority: command.priority,
            effective_at_ms,
            expires_at_ms: command.expires_at_ms,
            sequence,
            expired: false,
        });
        account.settle(now_ms);
        changes.accounts.insert(command.account_id.clone());
        Outcome {
            result: Ok(Accepted::Granted),
            replayed: false,
        }
    }

    fn debit(
        &mut self,
        account_id: &str,
        idempotency_key: &str,
        amount: u64,
        now_ms: u64,
        changes: &mut ChangeSet,
    ) -> Outcome {
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_identifier(idempotency_key))
        {
            // Not recorded: an invalid key cannot be stored or retried meaningfully.
            return rejected(rejection);
        }
        let record_key = (account_id.to_owned(), idempotency_key.to_owned());
        if let Some(record) = self.debit_records.get(&record_key) {
            if record.requested_amount != amount {
                return rejected(Rejection::IdempotencyConflict);
            }
            return Outcome {
                result: record.result.clone(),
                replayed: true,
            };
        }
        let result = if amount == 0 || amount > AMOUNT_MAX {
            Err(Rejection::InvalidAmount)
        } else {
            match self.accounts.get_mut(account_id) {
                None => Err(Rejection::AccountNotFound),
                Some(account) => {
                    account.settle(now_ms);
                    changes.accounts.insert(account_id.to_owned());
                    account.draw(amount, now_ms)
                }
            }
        };
        self.debit_records.insert(
            record_key.clone(),
            DebitRecord {
                requested_amount: amount,
                result: result.clone(),
                decided_at_ms: now_ms,
            },
        );
        changes.debit_records.push(record_key);
        Outcome {
            result,
            replayed: false,
        }
    }

    /// A digest of the whole state, equal on replicas at the same applied index. XXH3-128 over a
    /// canonical encoding (maps are ordered, fields are written in declaration order).
    pub fn digest(&self) -> u128 {
        let mut hasher = Xxh3::new();
        hasher.update(&self.last_timestamp_ms.to_le_bytes());
        for account in self.accounts.values() {
            hash_str(&mut hasher, &account.account_id);
            for value in [
                account.overdraft_limit,
                account.granted,
                account.consumed,
                account.expired,
                account.overage,
            ] {
                hasher.update(&value.to_le_bytes());
            }
            for grant in &account.grants {
                hash_str(&mut hasher, &grant.grant_id);
                for value in [
                    grant.amount,
                    grant.remaining,
                    grant.priority as u64,
                    grant.source as u64,
                    grant.effective_at_ms,
                    grant.expires_at_ms.unwrap_or(u64::MAX),
                    grant.sequence,
                    grant.expired as u64,
                ] {
                    hasher.update(&value.to_le_bytes());
                }
            }
        }
        for ((account_id, key), record) in &self.debit_records {
            hash_str(&mut hasher, account_id);
            hash_str(&mut hasher, key);
            hasher.update(&record.requested_amount.to_le_bytes());
            hasher.update(&record.decided_at_ms.to_le_bytes());
            match &record.result {
                Ok(Accepted::Debited { amount, available }) => {
                    hasher.update(&[1]);
                    hasher.update(&amount.to_le_bytes());
                    hasher.update(&available.to_le_bytes());
                }
                Ok(other) => {
                    hasher.update(&[2]);
                    hash_str(&mut hasher, &format!("{other:?}"));
                }
                Err(rejection) => {
                    hasher.update(&[3]);
                    hasher.update(&(*rejection as u16).to_le_bytes());
                }
            }
        }
        hasher.digest128()
    }
}

impl Account {
    /// Moves the remainders of grants expired at `now_ms` to `expired`, then repays overage from
    /// drawable grants. Run before every change so that draw-down only sees live credits.
    fn settle(&mut self, now_ms: u64) {
        for grant in &mut self.grants {
            if !grant.expired && is_expired_at(grant, now_ms) {
                self.expired += grant.remaining;
                grant.remaining = 0;
                grant.expired = true;
            }
        }
        if self.overage > 0 {
            let overage = self.overage;
            let repaid = self.take_from_grants(overage, now_ms);
            self.overage -= repaid;
        }
    }

    /// Credits drawable at `now_ms`, before overage.
    fn drawable(&self, now_ms: u64) -> u64 {
        self.grants
            .iter()
            .filter(|grant| is_drawable_at(grant, now_ms))
            .map(|grant| grant.remaining)
            .sum()
    }

    /// Available balance at `now_ms` (after `settle`).
    fn available(&self, now_ms: u64) -> i64 {
        signed(self.drawable(now_ms)) - signed(self.overage)
    }

    fn draw(&mut self, amount: u64, now_ms: u64) -> Result<Accepted, Rejection> {
        let available = self.available(now_ms);
        // i128: available may be negative and the limit is at most AMOUNT_MAX.
        if i128::from(amount) > i128::from(available) + i128::from(self.overdraft_limit) {
            return Err(Rejection::InsufficientCredits);
        }
        let Some(consumed) = self
            .consumed
            .checked_add(amount)
            .filter(|total| *total <= i64::MAX as u64)
        else {
            return Err(Rejection::AmountOverflow);
        };
        let from_grants = self.take_from_grants(amount, now_ms);
        self.overage += amount - from_grants;
        self.consumed = consumed;
        assert!(
            self.overage <= self.overdraft_limit,
            "overspend: overage {} above limit {}",
            self.overage,
            self.overdraft_limit
        );
        Ok(Accepted::Debited {
            amount,
            available: self.available(now_ms),
        })
    }

    /// Takes up to `amount` from drawable grants in draw-down order; returns what it took.
    fn take_from_grants(&mut self, amount: u64, now_ms: u64) -> u64 {
        let mut order: Vec<usize> = (0..self.grants.len())
            .filter(|index| is_drawable_at(&self.grants[*index], now_ms))
            .collect();
        order.sort_by(|left, right| draw_order(&self.grants[*left], &self.grants[*right]));
        let mut left_to_take = amount;
        for index in order {
            if left_to_take == 0 {
                break;
            }
            let grant = &mut self.grants[index];
            let taken = grant.remaining.min(left_to_take);
            grant.remaining -= taken;
            left_to_take -= taken;
        }
        amount - left_to_take
    }

    /// Conservation and no-overspend; on in release builds, after every apply.
    fn assert_invariants(&self) {
        let held: u128 = self
            .grants
            .iter()
            .filter(|grant| !grant.expired)
            .map(|grant| u128::from(grant.remaining))
            .sum();
        let granted_by_grants: u128 = self.grants.iter().map(|grant| u128::from(grant.amount)).sum();
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
            "account {}: overspend",
            self.account_id
        );
    }
}

fn rejected(rejection: Rejection) -> Outcome {
    Outcome {
        result: Err(rejection),
        replayed: false,
    }
}

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
fn draw_order(left: &Grant, right: &Grant) -> std::cmp::Ordering {
    left.priority
        .cmp(&right.priority)
        .then(
            left.expires_at_ms
                .unwrap_or(u64::MAX)
                .cmp(&right.expires_at_ms.unwrap_or(u64::MAX)),
        )
        .then(left.sequence.cmp(&right.sequence))
}

fn signed(value: u64) -> i64 {
    // Totals are bounded by i64::MAX when they are accepted (see `AmountOverflow`).
    i64::try_from(value).expect("credit totals are bounded by i64::MAX")
}

fn hash_str(hasher: &mut Xxh3, value: &str) {
    hasher.update(&(value.len() as u64).to_le_bytes());
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

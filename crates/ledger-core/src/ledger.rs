//! The ledger of one shard: accounts, records, reservations, journals, events, the catalog,
//! and `apply`.
//!
//! **Time.** The only clock is the `timestamp_ms` the leader stamped on the log entry. Effective
//! time never goes backwards: a command is applied at `max(timestamp_ms, last applied stamp)`.
//!
//! **Lazy settlement.** Grants expire, holds time out, periods reset and future-effective grants
//! start repaying overage at instants when no command may be applied. An account is *settled*
//! before every change, by every `Tick` that finds it due, and inside every `view`: settlement
//! replays the instants that passed since the account was last settled, in time order (see
//! `Account::settle`). So the state of an account at an instant does not depend on how often it
//! was touched before, and a `Tick` only makes the journal and the events timely.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::account::{draw_order, price, window_containing, Effects, TOTAL_MAX};
use crate::cluster::ClusterMap;
use crate::journal::{EntryKind, Event, Journal, JournalEntry};
use crate::records::DebitRecords;
use crate::types::*;

/// Most accounts one `Tick` settles, so that one entry's apply stays short; a tick that leaves
/// accounts due is followed by another.
pub const TICK_ACCOUNTS_MAX: usize = 1_000;

/// Longest webhook URL and secret, in bytes.
pub const WEBHOOK_FIELD_LENGTH_MAX: usize = 2_048;

/// Shard-level state: the catalog, how far webhook delivery got, the latest stamp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardMeta {
    pub catalog: Catalog,
    pub events_acknowledged: u64,
    /// The latest time stamp applied: effective time never goes backwards, even if a new
    /// leader's clock is behind the old one's.
    pub last_timestamp_ms: u64,
    /// The cluster map; kept by the metadata group only (version 0 elsewhere).
    pub cluster: ClusterMap,
}

/// Everything a ledger is made of, as storage persists it (see `Ledger::restore`).
#[derive(Clone, Debug, Default)]
pub struct LedgerParts {
    pub accounts: Vec<Account>,
    pub debit_records: Vec<((String, String), DebitRecord)>,
    pub grant_records: Vec<((String, String), GrantRecord)>,
    pub reservations: Vec<((String, String), Reservation)>,
    /// Journal entries with their account, in (account, sequence) order.
    pub journal: Vec<(String, JournalEntry)>,
    /// Events in sequence order.
    pub events: Vec<Event>,
    pub meta: ShardMeta,
}

/// An account as a reader sees it at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    /// Drawable credits now (effective, unexpired grants) minus overage; may be negative down to
    /// `-overdraft_limit`.
    pub available: i64,
    /// The journal's running balance: credits in live grants (effective or not) minus overage.
    pub balance: i64,
    pub reserved: u64,
    pub consumed: u64,
    pub expired: u64,
    pub voided: u64,
    pub granted: u64,
    pub overage: u64,
    pub overdraft_limit: u64,
    /// Live grants (not expired, not voided; exhausted and not yet effective ones included), in
    /// draw-down order.
    pub grants: Vec<Grant>,
    pub holds: Vec<Hold>,
    pub subscription: Option<Subscription>,
    /// Spend limits with the consumption of their current window.
    pub limits: Vec<(LimitScope, SpendLimit)>,
    pub alerts: AlertSettings,
}

/// The state of one shard's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    /// Every debit decision, keyed by (account id, idempotency key), including rejections and
    /// decisions about accounts that did not exist.
    debit_records: DebitRecords,
    /// Every grant id rejected for a reason of state or time, keyed by (account id, grant id),
    /// also for accounts that did not exist. An accepted grant id is the grant on its account
    /// instead; a grant id is never both.
    grant_records: BTreeMap<(String, String), GrantRecord>,
    /// Every reservation id decided, keyed by (account id, reservation id).
    reservations: BTreeMap<(String, String), Reservation>,
    journals: BTreeMap<String, Journal>,
    events: Vec<Event>,
    meta: ShardMeta,
    /// (instant, account) for every account with something due (`Account::next_due`). Derived.
    due: BTreeSet<(u64, String)>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Rebuilds a ledger from persisted parts (used by storage when a node restarts or installs a
    /// snapshot).
    ///
    /// # Panics
    /// When the parts break an invariant (an account given twice, conservation, a grant id both
    /// accepted and rejected, journal entries out of order): persisted state that is not a state
    /// this machine can reach must stop the node, not be served.
    pub fn restore(parts: LedgerParts) -> Ledger {
        let mut ledger = Ledger {
            meta: parts.meta,
            ..Ledger::default()
        };
        for account in parts.accounts {
            account.assert_invariants();
            let account_id = account.account_id.clone();
            let previous = ledger.accounts.insert(account_id.clone(), account);
            assert!(
                previous.is_none(),
                "restore: account {account_id:?} given twice"
            );
        }
        for ((account_id, grant_id), record) in parts.grant_records {
            if let Some(account) = ledger.accounts.get(&account_id) {
                assert!(
                    account.grant(&grant_id).is_none(),
                    "restore: grant {grant_id:?} of account {account_id:?} is both accepted and \
                     rejected"
                );
            }
            ledger.grant_records.insert((account_id, grant_id), record);
        }
        ledger.debit_records = parts.debit_records.into_iter().collect();
        ledger.reservations = parts.reservations.into_iter().collect();
        for (account_id, entry) in parts.journal {
            let entries = ledger.journals.entry(account_id.clone()).or_default();
            assert_eq!(
                entry.sequence,
                entries.len() as u64 + 1,
                "restore: journal of {account_id:?} has a gap or is out of order"
            );
            entries.push(entry);
        }
        for (account_id, account) in &ledger.accounts {
            let last = ledger
                .journals
                .get(account_id)
                .and_then(|entries| entries.last());
            assert_eq!(
                last.map_or((0, 0), |entry| (entry.sequence, entry.balance)),
                (account.journal_sequence, account.journal_balance),
                "restore: journal of {account_id:?} does not end where the account says"
            );
        }
        for (index, event) in parts.events.iter().enumerate() {
            assert_eq!(
                event.sequence,
                index as u64 + 1,
                "restore: events out of order"
            );
        }
        ledger.events = parts.events;
        for account in ledger.accounts.values_mut() {
            account.due_ms = account.next_due();
            if let Some(due_ms) = account.due_ms {
                ledger.due.insert((due_ms, account.account_id.clone()));
            }
        }
        ledger
    }

    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.get(account_id)
    }

    /// Accounts in account id order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The decided outcome of a debit key, if it was ever decided.
    pub fn debit_record(&self, account_id: &str, idempotency_key: &str) -> Option<&DebitRecord> {
        self.debit_records.get(account_id, idempotency_key)
    }

    /// Debit records in the order decided.
    pub fn debit_records(&self) -> impl Iterator<Item = (&(String, String), &DebitRecord)> {
        self.debit_records.iter()
    }

    /// The recorded rejection of a grant id, if its grant was rejected for a reason of state or
    /// time.
    pub fn grant_record(&self, account_id: &str, grant_id: &str) -> Option<&GrantRecord> {
        self.grant_records
            .get(&(account_id, grant_id) as &dyn RecordKey)
    }

    /// Grant records in (account id, grant id) order.
    pub fn grant_records(&self) -> impl Iterator<Item = (&(String, String), &GrantRecord)> {
        self.grant_records.iter()
    }

    pub fn reservation(&self, account_id: &str, reservation_id: &str) -> Option<&Reservation> {
        self.reservations
            .get(&(account_id, reservation_id) as &dyn RecordKey)
    }

    /// Reservation records in (account id, reservation id) order.
    pub fn reservations(&self) -> impl Iterator<Item = (&(String, String), &Reservation)> {
        self.reservations.iter()
    }

    /// The persisted journal of an account (entries up to its last settlement); empty for an
    /// unknown account.
    pub fn journal(&self, account_id: &str) -> &Journal {
        static EMPTY: Journal = Journal::new();
        self.journals.get(account_id).unwrap_or(&EMPTY)
    }

    /// Every account's journal, in account id order.
    pub fn journals(&self) -> impl Iterator<Item = (&String, &Journal)> {
        self.journals.iter()
    }

    /// The journal of an account as of `now_ms`: the persisted entries plus those a settlement
    /// through `now_ms` would add (expiries, resets, time-outs that no command or tick has
    /// recorded yet). `None` for an unknown account.
    pub fn journal_at(&self, account_id: &str, now_ms: u64) -> Option<Vec<JournalEntry>> {
        let mut account = self.accounts.get(account_id)?.clone();
        let mut effects = Effects::default();
        account.settle(
            now_ms.max(self.meta.last_timestamp_ms),
            &self.meta.catalog,
            &mut effects,
        );
        let mut entries = self.journal(account_id).to_vec();
        entries.extend(effects.journal);
        Some(entries)
    }

    /// Events with a sequence above `after`, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> &[Event] {
        let start = (after as usize).min(self.events.len());
        let end = start.saturating_add(limit).min(self.events.len());
        &self.events[start..end]
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    pub fn catalog(&self) -> &Catalog {
        &self.meta.catalog
    }

    pub fn last_timestamp_ms(&self) -> u64 {
        self.meta.last_timestamp_ms
    }

    /// The earliest instant at which some account has something due (a `Tick` then settles it).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(due_ms, _)| *due_ms)
    }

    /// The account as seen at `now_ms`, or at the last applied stamp if that is later: settled
    /// through that instant exactly as the next command would see it.
    pub fn view(&self, account_id: &str, now_ms: u64) -> Option<AccountView> {
        let mut account = self.accounts.get(account_id)?.clone();
        let now_ms = now_ms.max(self.meta.last_timestamp_ms);
        account.settle(now_ms, &self.meta.catalog, &mut Effects::default());
        account.roll_limit_windows(now_ms);
        let available = account.available(now_ms);
        let balance = account.balance();
        let mut grants: Vec<Grant> = account.grants.into_iter().filter(Grant::is_live).collect();
        grants.sort_by(draw_order);
        Some(AccountView {
            account_id: account.account_id,
            available,
            balance,
            reserved: account.reserved,
            consumed: account.consumed,
            expired: account.expired,
            voided: account.voided,
            granted: account.granted,
            overage: account.overage,
            overdraft_limit: account.overdraft_limit,
            grants,
            holds: account.holds,
            subscription: account.subscription,
            limits: account.limits.into_iter().collect(),
            alerts: account.alerts,
        })
    }

    /// Applies one command at the leader's time stamp `timestamp_ms` and returns its outcome.
    ///
    /// # Panics
    /// When an invariant of the touched account breaks (conservation, no overspend): a replica
    /// in an unknown state must stop rather than answer.
    pub fn apply(&mut self, command: &Command, timestamp_ms: u64) -> Outcome {
        self.meta.last_timestamp_ms = self.meta.last_timestamp_ms.max(timestamp_ms);
        let now_ms = self.meta.last_timestamp_ms;
        match command {
            Command::CreateAccount {
                account_id,
                overdraft_limit,
            } => self.create_account(account_id, *overdraft_limit, now_ms),
            Command::UpdateAccount {
                account_id,
                overdraft_limit,
            } => self.update_account(account_id, *overdraft_limit, now_ms),
            Command::Grant(grant) => self.grant(grant, now_ms),
            Command::VoidGrant {
                account_id,
                grant_id,
            } => self.void_grant(account_id, grant_id, now_ms),
            Command::Debit {
                account_id,
                idempotency_key,
                charge,
            } => self.debit(account_id, idempotency_key, charge, now_ms),
            Command::Reserve {
                account_id,
                reservation_id,
                amount,
                ttl_ms,
            } => self.reserve(account_id, reservation_id, *amount, *ttl_ms, now_ms),
            Command::Commit {
                account_id,
                reservation_id,
                charge,
            } => self.commit(account_id, reservation_id, charge, now_ms),
            Command::Release {
                account_id,
                reservation_id,
            } => self.release(account_id, reservation_id, now_ms),
            Command::Subscribe {
                account_id,
                plan_id,
                seats,
            } => self.subscribe(account_id, plan_id, *seats, now_ms),
            Command::Unsubscribe { account_id } => self.unsubscribe(account_id, now_ms),
            Command::SetSpendLimit {
                account_id,
                scope,
                limit,
            } => self.set_spend_limit(account_id, *scope, limit.as_ref(), now_ms),
            Command::SetAlerts { account_id, alerts } => {
                self.set_alerts(account_id, alerts, now_ms)
            }
            Command::UpdateCatalog(change) => self.update_catalog(change, now_ms),
            Command::InstallCatalog(catalog) => self.install_catalog(catalog, now_ms),
            Command::UpdateCluster(change) => match self.meta.cluster.apply(change) {
                Ok(changed) => {
                    let updated = Accepted::ClusterUpdated {
                        version: self.meta.cluster.version,
                    };
                    if changed {
                        accepted(updated)
                    } else {
                        replayed(updated)
                    }
                }
                Err(rejection) => rejected(rejection),
            },
            Command::Tick => self.tick(now_ms),
            Command::AcknowledgeEvents { through_seq } => {
                let through_seq = (*through_seq).min(self.events.len() as u64);
                if through_seq > self.meta.events_acknowledged {
                    self.meta.events_acknowledged = through_seq;
                    accepted(Accepted::Updated)
                } else {
                    replayed(Accepted::Updated)
                }
            }
        }
    }

    // ------------------------------------------------------------ the account workflow

    /// Settles an existing account through `now_ms` and runs `operation` on it, then records
    /// what it produced (journal, events, timed-out reservations), updates the due index and
    /// checks the account's invariants.
    fn on_account<T>(
        &mut self,
        account_id: &str,
        now_ms: u64,
        operation: impl FnOnce(&mut Account, &Catalog, &mut Effects) -> T,
    ) -> Option<T> {
        let account = self.accounts.get_mut(account_id)?;
        let mut effects = Effects::default();
        account.settle(now_ms, &self.meta.catalog, &mut effects);
        let result = operation(account, &self.meta.catalog, &mut effects);
        let due_change = check_and_move_due(account);
        self.record_effects(account_id, due_change, effects);
        Some(result)
    }

    /// Records what a change of an account produced: its move in the due index (from
    /// `check_and_move_due`), journal entries, events and timed-out reservations. Takes no
    /// account, so that the caller searches the account map once per command.
    fn record_effects(
        &mut self,
        account_id: &str,
        due_change: Option<DueChange>,
        effects: Effects,
    ) {
        if let Some(DueChange { previous, next }) = due_change {
            if let Some(previous) = previous {
                self.due.remove(&(previous, account_id.to_owned()));
            }
            if let Some(next) = next {
                self.due.insert((next, account_id.to_owned()));
            }
        }
        if !effects.journal.is_empty() {
            let entries = match self.journals.get_mut(account_id) {
                Some(entries) => entries,
                None => self.journals.entry(account_id.to_owned()).or_default(),
            };
            entries.extend(effects.journal);
        }
        for (at_ms, kind) in effects.events {
            let sequence = self.events.len() as u64 + 1;
            self.events.push(Event {
                sequence,
                at_ms,
                account_id: account_id.to_owned(),
                kind,
            });
        }
        for (reservation_id, at_ms, available) in effects.expired_reservations {
            let key = (account_id, reservation_id.as_str());
            if let Some(reservation) = self.reservations.get_mut(&key as &dyn RecordKey) {
                reservation.state = ReservationState::Expired { at_ms, available };
            }
        }
    }

    fn create_account(&mut self, account_id: &str, overdraft_limit: u64, now_ms: u64) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        if overdraft_limit > AMOUNT_MAX {
            return rejected(Rejection::InvalidAmount);
        }
        if let Some(existing) = self.accounts.get(account_id) {
            return if existing.created_overdraft_limit == overdraft_limit {
                replayed(Accepted::AccountExists)
            } else {
                rejected(Rejection::AccountConflict)
            };
        }
        let mut account = Account::new(account_id, overdraft_limit, now_ms);
        let due_change = check_and_move_due(&mut account);
        self.accounts.insert(account_id.to_owned(), account);
        self.record_effects(account_id, due_change, Effects::default());
        accepted(Accepted::AccountCreated)
    }

    fn update_account(
        &mut self,
        account_id: &str,
        overdraft_limit: Option<u64>,
        now_ms: u64,
    ) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        if overdraft_limit.is_some_and(|limit| limit > AMOUNT_MAX) {
            return rejected(Rejection::InvalidAmount);
        }
        let result = self.on_account(account_id, now_ms, |account, _, effects| {
            let Some(limit) = overdraft_limit else {
                return Ok(false);
            };
            if limit == account.overdraft_limit {
                return Ok(false);
            }
            if limit < account.overage {
                return Err(Rejection::OverdraftInUse);
            }
            account.overdraft_limit = limit;
            account.evaluate_balance_alerts(now_ms, effects);
            Ok(true)
        });
        setting_outcome(result)
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
    /// - `amount_overflow`: state (the account's `granted` total); recorded.
    ///
    /// A retry is the same request when it carries the same amount, source, priority and
    /// expiry, and an `effective_at` that is absent or the instant the first request was decided
    /// to be effective from (the one it named, or its stamp). Other parameters under a decided
    /// grant id are `grant_conflict`, as other amounts under a decided debit key are
    /// `idempotency_conflict`.
    fn grant(&mut self, command: &GrantCommand, now_ms: u64) -> Outcome {
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
        let Some(account) = self.accounts.get(&command.account_id) else {
            return self.record_grant_rejection(command, Rejection::AccountNotFound, now_ms);
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
            return self.record_grant_rejection(command, Rejection::InvalidExpiry, now_ms);
        }
        let fits = account
            .granted
            .checked_add(command.amount)
            .is_some_and(|total| total <= TOTAL_MAX);
        if !fits {
            return self.record_grant_rejection(command, Rejection::AmountOverflow, now_ms);
        }
        // `on_account` settles before adding, so that the new grant cannot take part in instants
        // before it existed.
        self.on_account(&command.account_id, now_ms, |account, _, effects| {
            account.add_grant(
                &command.grant_id,
                command.amount,
                command.source,
                command.priority,
                command.effective_at_ms.unwrap_or(now_ms),
                command.expires_at_ms,
                now_ms,
                effects,
            );
            // Overage is repaid first by a later grant, as soon as it is effective.
            account.after_change(now_ms, effects);
        });
        accepted(Accepted::Granted)
    }

    /// Decides a grant id as rejected, for good (see `grant` for which rejections come here).
    fn record_grant_rejection(
        &mut self,
        command: &GrantCommand,
        rejection: Rejection,
        now_ms: u64,
    ) -> Outcome {
        let record_key = (command.account_id.clone(), command.grant_id.clone());
        assert!(
            self.accounts
                .get(&command.account_id)
                .is_none_or(|account| account.grant(&command.grant_id).is_none()),
            "a rejection was recorded for an accepted grant id"
        );
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

    /// Voids what is left of a grant. A void is a setting, not a keyed decision: voiding again
    /// is a replay that reports what the first void voided.
    fn void_grant(&mut self, account_id: &str, grant_id: &str, now_ms: u64) -> Outcome {
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_grant_reference(grant_id))
        {
            return rejected(rejection);
        }
        let result = self.on_account(account_id, now_ms, |account, _, effects| {
            account.void_grant(grant_id, now_ms, effects)
        });
        match result {
            None => rejected(Rejection::AccountNotFound),
            Some(Err(rejection)) => rejected(rejection),
            Some(Ok(Some(voided))) => accepted(Accepted::Voided { voided }),
            Some(Ok(None)) => {
                let voided = self
                    .accounts
                    .get(account_id)
                    .and_then(|account| account.grant(grant_id))
                    .map_or(0, |grant| grant.voided_by_void);
                replayed(Accepted::Voided { voided })
            }
        }
    }

    fn debit(
        &mut self,
        account_id: &str,
        idempotency_key: &str,
        charge: &Charge,
        now_ms: u64,
    ) -> Outcome {
        // The checks of the command alone record nothing: their answer does not depend on state,
        // so a retry gets it again anyway, and nothing was applied (the key stays free).
        if let Err(rejection) = validate_identifier(account_id)
            .and_then(|()| validate_identifier(idempotency_key))
            .and_then(|()| validate_charge(charge))
        {
            return rejected(rejection);
        }
        if !crate::fault_injection::skip_idempotency_check() {
            if let Some(record) = self.debit_record(account_id, idempotency_key) {
                if record.charge != *charge {
                    return rejected(Rejection::IdempotencyConflict);
                }
                return Outcome {
                    result: record.result.clone(),
                    replayed: true,
                };
            }
        }
        let result = self
            .on_account(account_id, now_ms, |account, catalog, effects| {
                let priced = price(charge, catalog)?;
                account.debit(idempotency_key, priced, now_ms, effects)
            })
            .unwrap_or(Err(Rejection::AccountNotFound));
        let record_key = (account_id.to_owned(), idempotency_key.to_owned());
        let previous = self.debit_records.insert(
            record_key,
            DebitRecord {
                charge: charge.clone(),
                result: result.clone(),
                decided_at_ms: now_ms,
            },
        );
        assert!(
            previous.is_none() || crate::fault_injection::skip_idempotency_check(),
            "a debit key was decided twice"
        );
        accepted_or_rejected(result)
    }

    fn reserve(
        &mut self,
        account_id: &str,
        reservation_id: &str,
        amount: u64,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Outcome {
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_identifier(reservation_id))
        {
            return rejected(rejection);
        }
        if amount == 0 || amount > AMOUNT_MAX {
            return rejected(Rejection::InvalidAmount);
        }
        if ttl_ms == 0 || ttl_ms > RESERVATION_TTL_MAX_MS {
            return rejected(Rejection::InvalidTtl);
        }
        let key = (account_id.to_owned(), reservation_id.to_owned());
        if let Some(reservation) = self.reservations.get(&key) {
            if reservation.amount != amount || reservation.ttl_ms != ttl_ms {
                return rejected(Rejection::ReservationConflict);
            }
            return Outcome {
                result: reservation.reserve_result.clone(),
                replayed: true,
            };
        }
        let result = self
            .on_account(account_id, now_ms, |account, _, effects| {
                account.reserve(reservation_id, amount, ttl_ms, now_ms, effects)
            })
            .unwrap_or(Err(Rejection::AccountNotFound));
        let state = match &result {
            Ok(_) => ReservationState::Active,
            Err(rejection) => ReservationState::Rejected {
                rejection: *rejection,
            },
        };
        self.reservations.insert(
            key,
            Reservation {
                amount,
                ttl_ms,
                created_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(ttl_ms),
                state,
                reserve_result: result.clone(),
                failed_commits: Vec::new(),
            },
        );
        accepted_or_rejected(result)
    }

    /// Commits a reservation. Idempotent on (reservation id, charge): a committed reservation
    /// answers a commit with the same charge with that commit, and any other with
    /// `reservation_committed`. A commit rejected for a reason of state (unknown feature, the
    /// extra beyond the hold not covered, a spend limit) is recorded with its charge, so that a
    /// retry gets the same rejection and never applies later; a commit with another charge is
    /// another request and is decided on its own.
    fn commit(
        &mut self,
        account_id: &str,
        reservation_id: &str,
        charge: &Charge,
        now_ms: u64,
    ) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id)
            .and_then(|()| validate_identifier(reservation_id))
            .and_then(|()| validate_charge_allowing_zero(charge))
        {
            return rejected(rejection);
        }
        let key = (account_id, reservation_id);
        let Some(reservation) = self.reservations.get(&key as &dyn RecordKey) else {
            return rejected(Rejection::ReservationNotFound);
        };
        if let Some((_, rejection)) = reservation
            .failed_commits
            .iter()
            .find(|(failed, _)| failed == charge)
        {
            return Outcome {
                result: Err(*rejection),
                replayed: true,
            };
        }
        match &reservation.state {
            ReservationState::Active => {}
            ReservationState::Committed {
                charge: committed,
                amount,
                released,
                available,
                rate_card_version,
                ..
            } => {
                return if committed == charge {
                    replayed(Accepted::Committed {
                        amount: *amount,
                        released: *released,
                        available: *available,
                        rate_card_version: *rate_card_version,
                    })
                } else {
                    rejected(Rejection::ReservationCommitted)
                };
            }
            ReservationState::Released { .. } => return rejected(Rejection::ReservationReleased),
            ReservationState::Expired { .. } => return rejected(Rejection::ReservationExpired),
            ReservationState::Rejected { .. } => return rejected(Rejection::ReservationNotFound),
        }
        let result = self
            .on_account(account_id, now_ms, |account, catalog, effects| {
                // Settled first: the hold may have just timed out.
                if !account
                    .holds
                    .iter()
                    .any(|hold| hold.reservation_id == reservation_id)
                {
                    return Err(Rejection::ReservationExpired);
                }
                let priced = price(charge, catalog)?;
                account.commit(reservation_id, priced, now_ms, effects)
            })
            .unwrap_or(Err(Rejection::AccountNotFound));
        let reservation = self
            .reservations
            .get_mut(&key as &dyn RecordKey)
            .expect("the reservation looked up above");
        match &result {
            Ok(Accepted::Committed {
                amount,
                released,
                available,
                rate_card_version,
            }) => {
                reservation.state = ReservationState::Committed {
                    charge: charge.clone(),
                    amount: *amount,
                    released: *released,
                    available: *available,
                    rate_card_version: *rate_card_version,
                    at_ms: now_ms,
                };
            }
            // The time-out was recorded by the settlement; the answer is its state.
            Err(Rejection::ReservationExpired) => {}
            Err(rejection) => reservation
                .failed_commits
                .push((charge.clone(), *rejection)),
            Ok(other) => unreachable!("a commit answered {other:?}"),
        }
        accepted_or_rejected(result)
    }

    /// Releases a reservation. Idempotent: releasing again, or after its time to live released
    /// it, answers with that release.
    fn release(&mut self, account_id: &str, reservation_id: &str, now_ms: u64) -> Outcome {
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_identifier(reservation_id))
        {
            return rejected(rejection);
        }
        let key = (account_id, reservation_id);
        let Some(reservation) = self.reservations.get(&key as &dyn RecordKey) else {
            return rejected(Rejection::ReservationNotFound);
        };
        let amount = reservation.amount;
        if let Some(outcome) = finished_release(reservation) {
            return outcome;
        }
        let released = self.on_account(account_id, now_ms, |account, _, effects| {
            let released = account.release_hold(reservation_id, now_ms, effects);
            (released > 0).then(|| account.available(now_ms))
        });
        let reservation = self
            .reservations
            .get_mut(&key as &dyn RecordKey)
            .expect("the reservation looked up above");
        match released.flatten() {
            Some(available) => {
                reservation.state = ReservationState::Released {
                    at_ms: now_ms,
                    available,
                };
                accepted(Accepted::Released {
                    released: amount,
                    available,
                    expired: false,
                })
            }
            // The settlement found it timed out: answer with that.
            None => finished_release(reservation).unwrap_or_else(|| {
                unreachable!("an active reservation without a hold: {reservation:?}")
            }),
        }
    }

    fn subscribe(&mut self, account_id: &str, plan_id: &str, seats: u64, now_ms: u64) -> Outcome {
        if let Err(rejection) =
            validate_identifier(account_id).and_then(|()| validate_identifier(plan_id))
        {
            return rejected(rejection);
        }
        if seats == 0 || seats > SEATS_MAX {
            return rejected(Rejection::InvalidSeats);
        }
        let Some(plan) = self.meta.catalog.plans.get(plan_id).cloned() else {
            return rejected(Rejection::PlanNotFound);
        };
        let result = self.on_account(account_id, now_ms, |account, _, effects| {
            Ok(account.subscribe(&plan, seats, now_ms, effects))
        });
        setting_outcome(result)
    }

    fn unsubscribe(&mut self, account_id: &str, now_ms: u64) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        let result = self.on_account(
            account_id,
            now_ms,
            |account, _, _| Ok(account.unsubscribe()),
        );
        setting_outcome(result)
    }

    fn set_spend_limit(
        &mut self,
        account_id: &str,
        scope: LimitScope,
        limit: Option<&SpendLimitTerms>,
        now_ms: u64,
    ) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        if let Some(terms) = limit {
            if !terms.period.is_valid() {
                return rejected(Rejection::InvalidPeriod);
            }
            let too_large = [terms.soft, terms.hard]
                .into_iter()
                .flatten()
                .any(|value| value > AMOUNT_MAX);
            let inverted =
                matches!((terms.soft, terms.hard), (Some(soft), Some(hard)) if soft > hard);
            if too_large || inverted || (terms.soft.is_none() && terms.hard.is_none()) {
                return rejected(Rejection::InvalidSettings);
            }
        }
        // What the journal says was consumed in the window so far (a settlement adds no debit
        // or commit entries, so the persisted journal is complete for this).
        let spent_in_window = limit.map_or(0, |terms| {
            let (start_ms, _) = window_containing(&terms.period, now_ms);
            self.journal(account_id)
                .iter()
                .filter(|entry| entry.at_ms >= start_ms && entry.at_ms <= now_ms)
                .filter(|entry| matches!(entry.kind, EntryKind::Debit | EntryKind::Commit))
                .map(|entry| entry.amount)
                .sum()
        });
        let result = self.on_account(account_id, now_ms, |account, _, effects| {
            let unchanged = account.limits.get(&scope).map(|current| &current.terms) == limit;
            if unchanged {
                return Ok(false);
            }
            account.set_spend_limit(scope, limit.cloned(), now_ms, spent_in_window, effects);
            Ok(true)
        });
        setting_outcome(result)
    }

    fn set_alerts(&mut self, account_id: &str, alerts: &AlertSettings, now_ms: u64) -> Outcome {
        if let Err(rejection) = validate_identifier(account_id) {
            return rejected(rejection);
        }
        let out_of_range = |value: i64| value.unsigned_abs() > AMOUNT_MAX;
        let invalid = alerts.low_balance.len() > THRESHOLDS_MAX
            || alerts.low_balance.iter().any(|value| out_of_range(*value))
            || alerts.auto_top_up_below.is_some_and(out_of_range)
            || alerts
                .grant_expiring_within_ms
                .is_some_and(|within_ms| within_ms == 0 || within_ms > 100 * 366 * 86_400_000);
        if invalid {
            return rejected(Rejection::InvalidSettings);
        }
        let mut normalized = alerts.clone();
        normalized.low_balance.sort_unstable();
        normalized.low_balance.dedup();
        let result = self.on_account(account_id, now_ms, |account, _, effects| {
            if account.alerts == normalized {
                return Ok(false);
            }
            account
                .low_balance_crossed
                .retain(|threshold| normalized.low_balance.contains(threshold));
            if normalized.auto_top_up_below != account.alerts.auto_top_up_below {
                account.auto_top_up_crossed = false;
            }
            account.alerts = normalized;
            // A threshold the balance is already below fires now: it is the first observation.
            account.evaluate_balance_alerts(now_ms, effects);
            Ok(true)
        });
        setting_outcome(result)
    }

    // ------------------------------------------------------------ shard-level commands

    fn update_catalog(&mut self, change: &CatalogChange, now_ms: u64) -> Outcome {
        if let Err(rejection) = validate_catalog_change(change) {
            return rejected(rejection);
        }
        let mut catalog = self.meta.catalog.clone();
        let item_version = match change {
            CatalogChange::RateCard { features } => {
                if catalog
                    .rate_cards
                    .last()
                    .is_some_and(|card| card.features == *features)
                {
                    return replayed(Accepted::CatalogUpdated {
                        catalog_version: catalog.version,
                        item_version: catalog.rate_card_version(),
                    });
                }
                let version = catalog.rate_card_version() + 1;
                catalog.rate_cards.push(RateCard {
                    version,
                    features: features.clone(),
                    created_at_ms: now_ms,
                });
                version
            }
            CatalogChange::Plan { plan_id, terms } => {
                let current = catalog.plans.get(plan_id);
                if let Some(plan) = current.filter(|plan| plan.terms == *terms) {
                    return replayed(Accepted::CatalogUpdated {
                        catalog_version: catalog.version,
                        item_version: plan.version,
                    });
                }
                let version = current.map_or(1, |plan| plan.version + 1);
                catalog.plans.insert(
                    plan_id.clone(),
                    Plan {
                        plan_id: plan_id.clone(),
                        terms: terms.clone(),
                        version,
                    },
                );
                version
            }
            CatalogChange::Webhook { endpoint } => {
                if catalog.webhook == *endpoint {
                    return replayed(Accepted::CatalogUpdated {
                        catalog_version: catalog.version,
                        item_version: catalog.version,
                    });
                }
                catalog.webhook = endpoint.clone();
                catalog.version + 1
            }
        };
        catalog.version += 1;
        let catalog_version = catalog.version;
        self.replace_catalog(catalog, now_ms);
        accepted(Accepted::CatalogUpdated {
            catalog_version,
            item_version,
        })
    }

    fn install_catalog(&mut self, catalog: &Catalog, now_ms: u64) -> Outcome {
        if catalog.version <= self.meta.catalog.version {
            return replayed(Accepted::CatalogInstalled {
                catalog_version: self.meta.catalog.version,
            });
        }
        self.replace_catalog(catalog.clone(), now_ms);
        accepted(Accepted::CatalogInstalled {
            catalog_version: catalog.version,
        })
    }

    /// Installs a new catalog. When plans change, every subscribed account is settled through
    /// now first, so that period resets before this instant use the terms they had then.
    fn replace_catalog(&mut self, catalog: Catalog, now_ms: u64) {
        if catalog.plans != self.meta.catalog.plans {
            let subscribed: Vec<String> = self
                .accounts
                .values()
                .filter(|account| account.subscription.is_some())
                .map(|account| account.account_id.clone())
                .collect();
            for account_id in subscribed {
                self.on_account(&account_id, now_ms, |_, _, _| ());
            }
        }
        self.meta.catalog = catalog;
    }

    /// Settles the accounts due by `now_ms`, earliest first, at most `TICK_ACCOUNTS_MAX`.
    fn tick(&mut self, now_ms: u64) -> Outcome {
        let due: Vec<String> = self
            .due
            .iter()
            .take_while(|(due_ms, _)| *due_ms <= now_ms)
            .take(TICK_ACCOUNTS_MAX)
            .map(|(_, account_id)| account_id.clone())
            .collect();
        for account_id in &due {
            self.on_account(account_id, now_ms, |_, _, _| ());
        }
        accepted(Accepted::Ticked {
            accounts_settled: due.len() as u64,
        })
    }

    /// A digest of the whole state, equal on replicas at the same applied index: XXH3-128 over
    /// the derived `Hash` of every part (maps in key order, lengths before contents; the debit
    /// records as a set, see `DebitRecords`). It compares replicas running the same build; it is
    /// not a stable format.
    pub fn digest(&self) -> u128 {
        let mut hasher = DigestHasher(Xxh3::new());
        self.meta.hash(&mut hasher);
        self.accounts.hash(&mut hasher);
        self.debit_records.hash(&mut hasher);
        self.grant_records.hash(&mut hasher);
        self.reservations.hash(&mut hasher);
        self.journals.hash(&mut hasher);
        self.events.hash(&mut hasher);
        hasher.0.digest128()
    }
}

/// An account's move in the due index: its due instant before and after a change.
struct DueChange {
    previous: Option<u64>,
    next: Option<u64>,
}

/// Checks an account's invariants after a change (panics when one is broken: see the crate
/// header) and updates its due instant; returns the move when the instant changed.
fn check_and_move_due(account: &mut Account) -> Option<DueChange> {
    account.assert_invariants();
    let next = account.next_due();
    if next == account.due_ms {
        return None;
    }
    let previous = std::mem::replace(&mut account.due_ms, next);
    Some(DueChange { previous, next })
}

/// Feeds `std::hash::Hash` into XXH3 (the digests read its 128-bit result from `.0`).
pub(crate) struct DigestHasher(pub(crate) Xxh3);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// The answer to a release of a reservation that is no longer active; `None` while active.
fn finished_release(reservation: &Reservation) -> Option<Outcome> {
    match &reservation.state {
        ReservationState::Active => None,
        ReservationState::Released { available, .. } => Some(replayed(Accepted::Released {
            released: reservation.amount,
            available: *available,
            expired: false,
        })),
        ReservationState::Expired { available, .. } => Some(Outcome {
            result: Ok(Accepted::Released {
                released: reservation.amount,
                available: *available,
                expired: true,
            }),
            replayed: true,
        }),
        ReservationState::Committed { .. } => Some(rejected(Rejection::ReservationCommitted)),
        ReservationState::Rejected { .. } => Some(rejected(Rejection::ReservationNotFound)),
    }
}

/// The outcome of a setting: `Ok(true)` changed something, `Ok(false)` was already so (a
/// replay), `None` means the account does not exist.
fn setting_outcome(result: Option<Result<bool, Rejection>>) -> Outcome {
    match result {
        None => rejected(Rejection::AccountNotFound),
        Some(Err(rejection)) => rejected(rejection),
        Some(Ok(true)) => accepted(Accepted::Updated),
        Some(Ok(false)) => replayed(Accepted::Updated),
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

fn validate_charge(charge: &Charge) -> Result<(), Rejection> {
    match charge {
        Charge::Credits(amount) if *amount == 0 || *amount > AMOUNT_MAX => {
            Err(Rejection::InvalidAmount)
        }
        Charge::Credits(_) => Ok(()),
        Charge::Feature { feature, quantity } => {
            validate_identifier(feature)?;
            if *quantity == 0 || *quantity > AMOUNT_MAX {
                Err(Rejection::InvalidAmount)
            } else {
                Ok(())
            }
        }
    }
}

/// A commit may consume nothing (the call was cancelled, nothing was used): the whole hold is
/// released, and the commit is recorded as such.
fn validate_charge_allowing_zero(charge: &Charge) -> Result<(), Rejection> {
    match charge {
        Charge::Credits(0) => Ok(()),
        other => validate_charge(other),
    }
}

fn validate_catalog_change(change: &CatalogChange) -> Result<(), Rejection> {
    match change {
        CatalogChange::RateCard { features } => {
            if features.len() > FEATURES_MAX {
                return Err(Rejection::InvalidSettings);
            }
            for (feature, credits_per_unit) in features {
                validate_identifier(feature)?;
                if *credits_per_unit > AMOUNT_MAX {
                    return Err(Rejection::InvalidAmount);
                }
            }
            Ok(())
        }
        CatalogChange::Plan { plan_id, terms } => {
            validate_identifier(plan_id)?;
            if !terms.period.is_valid() {
                return Err(Rejection::InvalidPeriod);
            }
            let too_large = terms.credits_per_period > AMOUNT_MAX
                || terms.rollover_max.is_some_and(|cap| cap > AMOUNT_MAX);
            if too_large {
                Err(Rejection::InvalidAmount)
            } else {
                Ok(())
            }
        }
        CatalogChange::Webhook { endpoint } => match endpoint {
            Some(endpoint)
                if endpoint.url.is_empty()
                    || endpoint.url.len() > WEBHOOK_FIELD_LENGTH_MAX
                    || endpoint.secret.is_empty()
                    || endpoint.secret.len() > WEBHOOK_FIELD_LENGTH_MAX =>
            {
                Err(Rejection::InvalidSettings)
            }
            _ => Ok(()),
        },
    }
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

/// A grant id named by a void: a client's identifier, or the id of a grant the ledger made for
/// a subscription (`~` marks those; it never appears in a client's identifiers).
fn validate_grant_reference(grant_id: &str) -> Result<(), Rejection> {
    let valid = !grant_id.is_empty()
        && grant_id.len() <= 4 * IDENTIFIER_LENGTH_MAX
        && grant_id.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-' | b'~')
        });
    if valid {
        Ok(())
    } else {
        Err(Rejection::InvalidIdentifier)
    }
}

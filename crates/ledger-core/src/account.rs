//! The credit mechanics of one account: draw-down, holds, expiry, voids, period resets, spend
//! limits, alerts, and the lazy settlement that brings an account up to an instant in time
//! order. Everything here changes one `Account` and reports its journal entries and events in
//! `Effects`; `Ledger` owns the records and assigns event numbers.

use std::cmp::Ordering;

use crate::journal::{EntryKind, EventKind, JournalEntry};
use crate::types::*;

/// Totals (`granted`, `consumed`) are kept at most this large, so that every balance fits `i64`.
pub(crate) const TOTAL_MAX: u64 = i64::MAX as u64;

/// What an account operation produced besides the account's new state.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub journal: Vec<JournalEntry>,
    /// Events with their instants; `Ledger` numbers them.
    pub events: Vec<(u64, EventKind)>,
    /// Reservations released by their time to live: id, instant, available after.
    pub expired_reservations: Vec<(String, u64, i64)>,
}

/// The optional fields of a journal entry.
#[derive(Default)]
pub(crate) struct EntryDetails {
    pub source: Option<GrantSource>,
    pub feature: Option<String>,
    pub quantity: Option<u64>,
    pub rate_card_version: Option<u64>,
    pub overage: u64,
}

/// How a charge was priced.
pub(crate) struct Priced {
    pub amount: u64,
    pub feature: Option<String>,
    pub quantity: Option<u64>,
    pub rate_card_version: Option<u64>,
}

/// Prices a charge with the rate card in force.
pub(crate) fn price(charge: &Charge, catalog: &Catalog) -> Result<Priced, Rejection> {
    match charge {
        Charge::Credits(amount) => Ok(Priced {
            amount: *amount,
            feature: None,
            quantity: None,
            rate_card_version: None,
        }),
        Charge::Feature { feature, quantity } => {
            let unit = catalog.price(feature).ok_or(Rejection::UnknownFeature)?;
            let amount = unit
                .checked_mul(*quantity)
                .filter(|amount| *amount <= AMOUNT_MAX)
                .ok_or(Rejection::AmountOverflow)?;
            Ok(Priced {
                amount,
                feature: Some(feature.clone()),
                quantity: Some(*quantity),
                rate_card_version: Some(catalog.rate_card_version()),
            })
        }
    }
}

impl Account {
    pub(crate) fn new(account_id: &str, overdraft_limit: u64, now_ms: u64) -> Account {
        Account {
            account_id: account_id.to_owned(),
            overdraft_limit,
            created_overdraft_limit: overdraft_limit,
            grants: Vec::new(),
            granted: 0,
            consumed: 0,
            expired: 0,
            voided: 0,
            reserved: 0,
            overage: 0,
            holds: Vec::new(),
            subscription: None,
            subscriptions_started: 0,
            limits: Default::default(),
            alerts: AlertSettings::default(),
            low_balance_crossed: Vec::new(),
            auto_top_up_crossed: false,
            settled_ms: now_ms,
            journal_sequence: 0,
            journal_balance: 0,
            due_ms: None,
        }
    }

    /// The grant with this id, expired and exhausted ones included.
    pub(crate) fn grant(&self, grant_id: &str) -> Option<&Grant> {
        self.grants.iter().find(|grant| grant.grant_id == grant_id)
    }

    fn grant_index(&self, grant_id: &str) -> Option<usize> {
        self.grants
            .iter()
            .position(|grant| grant.grant_id == grant_id)
    }

    /// Credits drawable at `now_ms`, before overage.
    pub(crate) fn drawable(&self, now_ms: u64) -> u64 {
        self.grants
            .iter()
            .filter(|grant| is_drawable_at(grant, now_ms))
            .map(|grant| grant.remaining)
            .sum()
    }

    /// Available balance at `now_ms` (meaningful once settled through `now_ms`).
    pub(crate) fn available(&self, now_ms: u64) -> i64 {
        signed(self.drawable(now_ms)) - signed(self.overage)
    }

    /// Credits in live grants minus overage: the journal's running balance.
    pub(crate) fn balance(&self) -> i64 {
        let held: u64 = self
            .grants
            .iter()
            .filter(|grant| grant.is_live())
            .map(|grant| grant.remaining)
            .sum();
        signed(held) - signed(self.overage)
    }

    /// Appends a journal entry and moves the running balance by `delta`.
    // Every argument is a field of the entry; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn journal(
        &mut self,
        effects: &mut Effects,
        at_ms: u64,
        kind: EntryKind,
        amount: u64,
        delta: i64,
        reference: &str,
        details: EntryDetails,
    ) {
        self.journal_sequence += 1;
        self.journal_balance += delta;
        effects.journal.push(JournalEntry {
            sequence: self.journal_sequence,
            at_ms,
            kind,
            amount,
            delta,
            balance: self.journal_balance,
            reference: reference.to_owned(),
            source: details.source,
            feature: details.feature,
            quantity: details.quantity,
            rate_card_version: details.rate_card_version,
            overage: details.overage,
        });
    }

    // ---------------------------------------------------------------- settlement

    /// Brings the account up to `now_ms` as if time had passed instant by instant: at each
    /// instant something is due (a hold's time to live, a grant's expiry or expiry warning, a
    /// period reset, a grant becoming effective while overage is owed), in time order, that
    /// instant is processed (see `process_instant`). Instants before `settled_ms` were history
    /// already: what they would do is done at `settled_ms` (a grant added with a back-dated
    /// `effective_at` repays overage from the moment it is added, not before).
    pub(crate) fn settle(&mut self, now_ms: u64, catalog: &Catalog, effects: &mut Effects) {
        let mut previous_ms: Option<u64> = None;
        while let Some(instant_ms) = self.next_due().filter(|instant_ms| *instant_ms <= now_ms) {
            let at_ms = instant_ms.max(self.settled_ms);
            // Processing an instant clears everything due at it (see `process_instant`), so the
            // instants strictly increase; a repeat would be a busy loop, and a replica in an
            // unknown state must stop rather than spin.
            assert!(
                previous_ms.is_none_or(|previous_ms| at_ms > previous_ms),
                "account {}: settlement did not progress past {at_ms}",
                self.account_id
            );
            previous_ms = Some(at_ms);
            self.process_instant(at_ms, catalog, effects);
            self.settled_ms = at_ms;
        }
        self.settled_ms = self.settled_ms.max(now_ms);
    }

    /// The earliest instant at which something will be due without any command: the key of the
    /// ledger's due index (a `Tick` settles the account then).
    pub(crate) fn next_due(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |instant_ms: u64| {
            next = Some(next.map_or(instant_ms, |current| current.min(instant_ms)));
        };
        for hold in &self.holds {
            consider(hold.expires_at_ms);
        }
        if let Some(subscription) = &self.subscription {
            consider(subscription.next_reset_ms);
        }
        let warn_within_ms = self.alerts.grant_expiring_within_ms;
        let repayable_overage = self.repayable_overage();
        for grant in &self.grants {
            if !grant.is_live() {
                continue;
            }
            // Even an exhausted grant expires: credits a hold took from it come back to it, and
            // must then expire with it rather than stay in the balance.
            if let Some(expires_at_ms) = grant.expires_at_ms {
                consider(expires_at_ms);
                if let (Some(within_ms), false, true) =
                    (warn_within_ms, grant.expiry_warned, grant.remaining > 0)
                {
                    consider(expires_at_ms.saturating_sub(within_ms));
                }
            }
            if repayable_overage > 0 && grant.remaining > 0 {
                consider(grant.effective_at_ms.max(self.settled_ms));
            }
        }
        next
    }

    /// Processes everything due at `at_ms`: holds time out, a period ends (the unused allowance
    /// rolls over up to the cap and the rest expires with the other grants expiring now, then
    /// the next allowance is granted), expiry warnings are emitted, overage is repaid by what is
    /// drawable now, and balance alerts are evaluated.
    fn process_instant(&mut self, at_ms: u64, catalog: &Catalog, effects: &mut Effects) {
        let timed_out: Vec<String> = self
            .holds
            .iter()
            .filter(|hold| hold.expires_at_ms <= at_ms)
            .map(|hold| hold.reservation_id.clone())
            .collect();
        for reservation_id in timed_out {
            self.release_hold(&reservation_id, at_ms, effects);
            let available = self.available(at_ms);
            effects
                .expired_reservations
                .push((reservation_id, at_ms, available));
        }
        let reset = self
            .subscription
            .as_ref()
            .is_some_and(|subscription| subscription.next_reset_ms <= at_ms);
        let rolled_over = if reset {
            self.rollover_amount(at_ms)
        } else {
            0
        };
        self.expire_through(at_ms, effects);
        if reset {
            self.start_next_period(at_ms, rolled_over, catalog, effects);
        }
        if let Some(within_ms) = self.alerts.grant_expiring_within_ms {
            for index in 0..self.grants.len() {
                let grant = &self.grants[index];
                let Some(expires_at_ms) = grant.expires_at_ms else {
                    continue;
                };
                if grant.is_live()
                    && grant.remaining > 0
                    && !grant.expiry_warned
                    && expires_at_ms.saturating_sub(within_ms) <= at_ms
                {
                    effects.events.push((
                        at_ms,
                        EventKind::GrantExpiring {
                            grant_id: grant.grant_id.clone(),
                            expires_at_ms,
                            remaining: grant.remaining,
                        },
                    ));
                    self.grants[index].expiry_warned = true;
                }
            }
        }
        self.repay_overage(at_ms, effects);
        self.evaluate_balance_alerts(at_ms, effects);
    }

    /// Expires every live grant whose `expires_at_ms` is at or before `at_ms`.
    fn expire_through(&mut self, at_ms: u64, effects: &mut Effects) {
        for index in 0..self.grants.len() {
            let grant = &self.grants[index];
            if grant.is_live() && is_expired_at(grant, at_ms) {
                let amount = grant.remaining;
                let source = grant.source;
                let grant_id = grant.grant_id.clone();
                let grant = &mut self.grants[index];
                grant.expired = true;
                grant.expired_amount += amount;
                grant.remaining = 0;
                self.expired += amount;
                if amount > 0 {
                    self.journal(
                        effects,
                        at_ms,
                        EntryKind::Expire,
                        amount,
                        -signed(amount),
                        &grant_id,
                        EntryDetails {
                            source: Some(source),
                            ..Default::default()
                        },
                    );
                }
            }
        }
    }

    /// Expires every live grant of the current subscription now (a plan switch).
    fn expire_subscription_grants(&mut self, at_ms: u64, effects: &mut Effects) {
        let Some(prefix) = self.subscription.as_ref().map(subscription_prefix) else {
            return;
        };
        for grant in &mut self.grants {
            if grant.is_live() && grant.grant_id.starts_with(&prefix) {
                grant.expires_at_ms = Some(grant.expires_at_ms.map_or(at_ms, |at| at.min(at_ms)));
            }
        }
        self.expire_through(at_ms, effects);
    }

    /// Overage held by active reservations: it is settled by their commit or release, not
    /// repaid by grants (a release gives exactly it back).
    fn held_overage(&self) -> u64 {
        self.holds
            .iter()
            .map(|hold| overage_part(&hold.parts))
            .sum()
    }

    /// Overage that grants repay: what was spent beyond the grants, not what is only held.
    fn repayable_overage(&self) -> u64 {
        self.overage - self.held_overage()
    }

    /// Repays overage from the grants drawable at `at_ms`, in draw-down order.
    fn repay_overage(&mut self, at_ms: u64, effects: &mut Effects) {
        loop {
            let repayable = self.repayable_overage();
            if repayable == 0 {
                break;
            }
            let Some(index) = self.first_drawable(at_ms) else {
                break;
            };
            let grant = &mut self.grants[index];
            let repaid = grant.remaining.min(repayable);
            grant.remaining -= repaid;
            let (grant_id, source) = (grant.grant_id.clone(), grant.source);
            self.overage -= repaid;
            self.journal(
                effects,
                at_ms,
                EntryKind::OverageRepaid,
                repaid,
                0,
                &grant_id,
                EntryDetails {
                    source: Some(source),
                    ..Default::default()
                },
            );
        }
    }

    // ---------------------------------------------------------------- alerts

    /// Emits `low_balance` and `auto_top_up_wanted` once per crossing: when available goes from
    /// at or above a threshold to below it. Going back to or above it re-arms the alert.
    pub(crate) fn evaluate_balance_alerts(&mut self, at_ms: u64, effects: &mut Effects) {
        if self.alerts.low_balance.is_empty() && self.alerts.auto_top_up_below.is_none() {
            return;
        }
        let available = self.available(at_ms);
        for threshold in self.alerts.low_balance.clone() {
            let below = available < threshold;
            let crossed = self.low_balance_crossed.contains(&threshold);
            if below && !crossed {
                self.low_balance_crossed.push(threshold);
                self.low_balance_crossed.sort_unstable();
                effects.events.push((
                    at_ms,
                    EventKind::LowBalance {
                        threshold,
                        available,
                    },
                ));
            } else if !below && crossed {
                self.low_balance_crossed.retain(|value| *value != threshold);
            }
        }
        if let Some(threshold) = self.alerts.auto_top_up_below {
            let below = available < threshold;
            if below && !self.auto_top_up_crossed {
                effects.events.push((
                    at_ms,
                    EventKind::AutoTopUpWanted {
                        threshold,
                        available,
                    },
                ));
            }
            self.auto_top_up_crossed = below;
        }
    }

    // ---------------------------------------------------------------- spend limits

    /// Moves every limit's window to the one containing `now_ms`.
    pub(crate) fn roll_limit_windows(&mut self, now_ms: u64) {
        for limit in self.limits.values_mut() {
            if now_ms >= limit.window_end_ms || now_ms < limit.window_start_ms {
                let (start, end) = window_containing(&limit.terms.period, now_ms);
                limit.window_start_ms = start;
                limit.window_end_ms = end;
                limit.spent = 0;
                limit.soft_alerted = false;
                limit.hard_alerted = false;
            }
        }
    }

    /// Whether consuming `amount` more (with the active holds counted as consumed, since they
    /// may be committed in this window) keeps every hard limit; on refusal, the
    /// `hard_limit_reached` event of the window if not yet emitted.
    pub(crate) fn check_spend_limits(
        &mut self,
        amount: u64,
        at_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), Rejection> {
        self.roll_limit_windows(at_ms);
        let reserved = self.reserved;
        let mut refused = false;
        for (scope, limit) in &mut self.limits {
            let Some(hard) = limit.terms.hard else {
                continue;
            };
            let wanted = u128::from(limit.spent) + u128::from(reserved) + u128::from(amount);
            if wanted > u128::from(hard) {
                refused = true;
                if !limit.hard_alerted {
                    limit.hard_alerted = true;
                    effects.events.push((
                        at_ms,
                        EventKind::HardLimitReached {
                            scope: *scope,
                            window_start_ms: limit.window_start_ms,
                            spent: limit.spent,
                            limit: hard,
                        },
                    ));
                }
            }
        }
        if refused {
            Err(Rejection::SpendLimitExceeded)
        } else {
            Ok(())
        }
    }

    /// Counts `amount` consumed in every limit's window; emits soft and hard crossings.
    fn count_spend(&mut self, amount: u64, at_ms: u64, effects: &mut Effects) {
        self.count_spend_in(None, amount, at_ms, effects);
    }

    /// Counts `amount` in the window of one scope's limit (`Some`) or of all (`None`).
    fn count_spend_in(
        &mut self,
        only: Option<LimitScope>,
        amount: u64,
        at_ms: u64,
        effects: &mut Effects,
    ) {
        self.roll_limit_windows(at_ms);
        for (scope, limit) in &mut self.limits {
            if only.is_some_and(|only| only != *scope) {
                continue;
            }
            limit.spent = limit.spent.saturating_add(amount);
            if let Some(soft) = limit.terms.soft {
                if limit.spent >= soft && !limit.soft_alerted {
                    limit.soft_alerted = true;
                    effects.events.push((
                        at_ms,
                        EventKind::SoftLimitReached {
                            scope: *scope,
                            window_start_ms: limit.window_start_ms,
                            spent: limit.spent,
                            limit: soft,
                        },
                    ));
                }
            }
            if let Some(hard) = limit.terms.hard {
                if limit.spent >= hard && !limit.hard_alerted {
                    limit.hard_alerted = true;
                    effects.events.push((
                        at_ms,
                        EventKind::HardLimitReached {
                            scope: *scope,
                            window_start_ms: limit.window_start_ms,
                            spent: limit.spent,
                            limit: hard,
                        },
                    ));
                }
            }
        }
    }

    /// Sets or removes one scope's limit; `spent` is what the journal says was consumed in the
    /// window containing `now_ms`.
    pub(crate) fn set_spend_limit(
        &mut self,
        scope: LimitScope,
        terms: Option<SpendLimitTerms>,
        now_ms: u64,
        spent: u64,
        effects: &mut Effects,
    ) {
        let Some(terms) = terms else {
            self.limits.remove(&scope);
            return;
        };
        let (start, end) = window_containing(&terms.period, now_ms);
        self.limits.insert(
            scope,
            SpendLimit {
                terms,
                window_start_ms: start,
                window_end_ms: end,
                spent: 0,
                soft_alerted: false,
                hard_alerted: false,
            },
        );
        // Counting what was already consumed emits the crossings the new limit starts with.
        if spent > 0 {
            self.count_spend_in(Some(scope), spent, now_ms, effects);
        }
    }

    // ---------------------------------------------------------------- draws and holds

    /// The first grant in draw-down order drawable at `now_ms`.
    fn first_drawable(&self, now_ms: u64) -> Option<usize> {
        self.grants
            .iter()
            .enumerate()
            .filter(|(_, grant)| is_drawable_at(grant, now_ms))
            .min_by(|(_, left), (_, right)| draw_order(left, right))
            .map(|(index, _)| index)
    }

    /// Takes up to `amount` from the grants drawable at `now_ms`, in draw-down order; returns
    /// the parts taken (grant sequence, amount).
    fn take_from_grants(&mut self, amount: u64, now_ms: u64) -> Vec<HoldPart> {
        let mut parts = Vec::new();
        let mut left_to_take = amount;
        while left_to_take > 0 {
            let Some(index) = self.first_drawable(now_ms) else {
                break;
            };
            let grant = &mut self.grants[index];
            let taken = grant.remaining.min(left_to_take);
            grant.remaining -= taken;
            left_to_take -= taken;
            parts.push(HoldPart {
                grant_sequence: Some(grant.sequence),
                amount: taken,
            });
        }
        parts
    }

    /// Whether `amount` more can be taken at `now_ms`, from grants and the overdraft allowance.
    fn covers(&self, amount: u64, now_ms: u64) -> bool {
        // i128: available may be negative, amount and the limit are at most AMOUNT_MAX.
        i128::from(amount) <= i128::from(self.available(now_ms)) + i128::from(self.overdraft_limit)
    }

    /// Takes `amount` at `now_ms` from grants in draw-down order, the rest as overage within the
    /// overdraft limit (the caller checked `covers`). Returns the parts, the overage one last.
    fn take(&mut self, amount: u64, now_ms: u64) -> Vec<HoldPart> {
        let mut parts = self.take_from_grants(amount, now_ms);
        let from_grants: u64 = parts.iter().map(|part| part.amount).sum();
        let beyond = amount - from_grants;
        if beyond > 0 {
            self.overage += beyond;
            assert!(
                self.overage <= self.overdraft_limit,
                "account {}: overspend, overage {} above limit {}",
                self.account_id,
                self.overage,
                self.overdraft_limit
            );
            parts.push(HoldPart {
                grant_sequence: None,
                amount: beyond,
            });
        }
        parts
    }

    /// Debits `priced.amount` at `now_ms` (settled): spend limits, then credits.
    pub(crate) fn debit(
        &mut self,
        reference: &str,
        priced: Priced,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<Accepted, Rejection> {
        let amount = priced.amount;
        let Some(consumed) = self
            .consumed
            .checked_add(amount)
            .filter(|total| *total <= TOTAL_MAX)
        else {
            return Err(Rejection::AmountOverflow);
        };
        self.check_spend_limits(amount, now_ms, effects)?;
        if !self.covers(amount, now_ms) {
            return Err(Rejection::InsufficientCredits);
        }
        let parts = self.take(amount, now_ms);
        self.consumed = consumed;
        let overage = overage_part(&parts);
        self.journal(
            effects,
            now_ms,
            EntryKind::Debit,
            amount,
            -signed(amount),
            reference,
            EntryDetails {
                feature: priced.feature,
                quantity: priced.quantity,
                rate_card_version: priced.rate_card_version,
                overage,
                source: None,
            },
        );
        self.count_spend(amount, now_ms, effects);
        self.evaluate_balance_alerts(now_ms, effects);
        Ok(Accepted::Debited {
            amount,
            available: self.available(now_ms),
            rate_card_version: priced.rate_card_version,
        })
    }

    /// Holds `amount` for `ttl_ms` at `now_ms` (settled).
    pub(crate) fn reserve(
        &mut self,
        reservation_id: &str,
        amount: u64,
        ttl_ms: u64,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<Accepted, Rejection> {
        self.check_spend_limits(amount, now_ms, effects)?;
        if !self.covers(amount, now_ms) {
            return Err(Rejection::InsufficientCredits);
        }
        let Some(reserved) = self.reserved.checked_add(amount) else {
            return Err(Rejection::AmountOverflow);
        };
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let parts = self.take(amount, now_ms);
        self.reserved = reserved;
        let overage = overage_part(&parts);
        self.holds.push(Hold {
            reservation_id: reservation_id.to_owned(),
            amount,
            expires_at_ms,
            parts,
        });
        self.journal(
            effects,
            now_ms,
            EntryKind::Reserve,
            amount,
            -signed(amount),
            reservation_id,
            EntryDetails {
                overage,
                ..Default::default()
            },
        );
        self.evaluate_balance_alerts(now_ms, effects);
        Ok(Accepted::Reserved {
            amount,
            expires_at_ms,
            available: self.available(now_ms),
        })
    }

    /// Commits an active hold at `now_ms` (settled): consumes `priced.amount` from it, releases
    /// the rest, or draws the extra beyond it if spend limits and credits allow.
    pub(crate) fn commit(
        &mut self,
        reservation_id: &str,
        priced: Priced,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<Accepted, Rejection> {
        let index = self
            .holds
            .iter()
            .position(|hold| hold.reservation_id == reservation_id)
            .expect("commit of an active reservation has a hold");
        let held = self.holds[index].amount;
        let amount = priced.amount;
        let Some(consumed) = self
            .consumed
            .checked_add(amount)
            .filter(|total| *total <= TOTAL_MAX)
        else {
            return Err(Rejection::AmountOverflow);
        };
        let extra = amount.saturating_sub(held);
        if extra > 0 {
            self.check_spend_limits(extra, now_ms, effects)?;
            if !self.covers(extra, now_ms) {
                return Err(Rejection::InsufficientCredits);
            }
        }
        let mut hold = self.holds.remove(index);
        self.reserved -= held;
        // Consume from the hold: grant parts first (in the order taken), the overage part last,
        // so that as little as possible is billed as overage.
        hold.parts.sort_by_key(|part| part.grant_sequence.is_none());
        let mut to_consume = amount.min(held);
        let mut overage_consumed = 0;
        let mut returned = Vec::new();
        for part in hold.parts {
            let used = part.amount.min(to_consume);
            to_consume -= used;
            if part.grant_sequence.is_none() {
                overage_consumed += used;
            }
            if part.amount > used {
                returned.push(HoldPart {
                    grant_sequence: part.grant_sequence,
                    amount: part.amount - used,
                });
            }
        }
        let extra_parts = if extra > 0 {
            self.take(extra, now_ms)
        } else {
            Vec::new()
        };
        overage_consumed += overage_part(&extra_parts);
        self.consumed = consumed;
        self.journal(
            effects,
            now_ms,
            EntryKind::Commit,
            amount,
            -signed(extra),
            reservation_id,
            EntryDetails {
                feature: priced.feature,
                quantity: priced.quantity,
                rate_card_version: priced.rate_card_version,
                overage: overage_consumed,
                source: None,
            },
        );
        let released = held - amount.min(held);
        if released > 0 {
            self.give_back(reservation_id, returned, now_ms, effects);
        }
        self.count_spend(amount, now_ms, effects);
        self.repay_overage(now_ms, effects);
        self.evaluate_balance_alerts(now_ms, effects);
        Ok(Accepted::Committed {
            amount,
            released,
            available: self.available(now_ms),
            rate_card_version: priced.rate_card_version,
        })
    }

    /// Releases an active hold (explicitly, or by its time to live) and returns how much it
    /// held.
    pub(crate) fn release_hold(
        &mut self,
        reservation_id: &str,
        at_ms: u64,
        effects: &mut Effects,
    ) -> u64 {
        let Some(index) = self
            .holds
            .iter()
            .position(|hold| hold.reservation_id == reservation_id)
        else {
            return 0;
        };
        let hold = self.holds.remove(index);
        self.reserved -= hold.amount;
        self.give_back(reservation_id, hold.parts, at_ms, effects);
        self.repay_overage(at_ms, effects);
        self.evaluate_balance_alerts(at_ms, effects);
        hold.amount
    }

    /// Returns held parts: to their grants (those no longer live pass them on to expired or
    /// voided at once), the overage part by reducing overage. One `release` entry for the whole,
    /// then one `expire`/`void` entry per grant that was no longer live.
    fn give_back(
        &mut self,
        reservation_id: &str,
        parts: Vec<HoldPart>,
        at_ms: u64,
        effects: &mut Effects,
    ) {
        let total: u64 = parts.iter().map(|part| part.amount).sum();
        let mut dead = Vec::new();
        for part in &parts {
            match part.grant_sequence {
                None => self.overage -= part.amount,
                Some(sequence) => {
                    let grant = &mut self.grants[sequence as usize];
                    grant.remaining += part.amount;
                    if !grant.is_live() {
                        dead.push((sequence as usize, part.amount));
                    }
                }
            }
        }
        self.journal(
            effects,
            at_ms,
            EntryKind::Release,
            total,
            signed(total),
            reservation_id,
            EntryDetails::default(),
        );
        for (index, amount) in dead {
            let grant = &mut self.grants[index];
            grant.remaining -= amount;
            let (kind, grant_id, source) = if grant.voided {
                grant.voided_amount += amount;
                self.voided += amount;
                (EntryKind::Void, grant.grant_id.clone(), grant.source)
            } else {
                grant.expired_amount += amount;
                self.expired += amount;
                (EntryKind::Expire, grant.grant_id.clone(), grant.source)
            };
            self.journal(
                effects,
                at_ms,
                kind,
                amount,
                -signed(amount),
                &grant_id,
                EntryDetails {
                    source: Some(source),
                    ..Default::default()
                },
            );
        }
    }

    // ---------------------------------------------------------------- grants

    /// Adds a grant at `now_ms` (settled; the caller checked the totals).
    // Every argument is a field of the grant; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_grant(
        &mut self,
        grant_id: &str,
        amount: u64,
        source: GrantSource,
        priority: u8,
        effective_at_ms: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
        effects: &mut Effects,
    ) {
        self.granted += amount;
        let sequence = self.grants.len() as u64;
        self.grants.push(Grant {
            grant_id: grant_id.to_owned(),
            amount,
            remaining: amount,
            source,
            priority,
            effective_at_ms,
            expires_at_ms,
            sequence,
            expired: false,
            voided: false,
            expired_amount: 0,
            voided_amount: 0,
            expiry_warned: false,
            voided_by_void: 0,
        });
        self.journal(
            effects,
            now_ms,
            EntryKind::Grant,
            amount,
            signed(amount),
            grant_id,
            EntryDetails {
                source: Some(source),
                ..Default::default()
            },
        );
    }

    /// After a change at `now_ms`: overage is repaid by whatever became drawable, alerts.
    pub(crate) fn after_change(&mut self, now_ms: u64, effects: &mut Effects) {
        self.repay_overage(now_ms, effects);
        self.evaluate_balance_alerts(now_ms, effects);
    }

    /// Voids the remainder of a grant at `now_ms` (settled). Returns what was voided, or `None`
    /// when the grant was voided before (a replay).
    pub(crate) fn void_grant(
        &mut self,
        grant_id: &str,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<Option<u64>, Rejection> {
        let index = self.grant_index(grant_id).ok_or(Rejection::GrantNotFound)?;
        let grant = &mut self.grants[index];
        if grant.voided {
            return Ok(None);
        }
        grant.voided = true;
        if grant.expired {
            return Ok(Some(0));
        }
        let amount = grant.remaining;
        grant.remaining = 0;
        grant.voided_amount += amount;
        grant.voided_by_void = amount;
        let source = grant.source;
        self.voided += amount;
        if amount > 0 {
            self.journal(
                effects,
                now_ms,
                EntryKind::Void,
                amount,
                -signed(amount),
                grant_id,
                EntryDetails {
                    source: Some(source),
                    ..Default::default()
                },
            );
        }
        self.evaluate_balance_alerts(now_ms, effects);
        Ok(Some(amount))
    }

    // ---------------------------------------------------------------- subscriptions

    /// Subscribes to `plan` at `now_ms` (settled), changes the seats of the same plan, or
    /// switches plans. Returns whether anything changed.
    ///
    /// Seat changes: more seats mid-period add a `seat` grant at once for the added seats,
    /// pro-rated to the time left in the period (rounded down) and expiring with it; fewer
    /// seats apply from the next period (nothing is taken back). Switching plans expires the
    /// current allowance now and starts the new plan's first period now.
    pub(crate) fn subscribe(
        &mut self,
        plan: &Plan,
        seats: u64,
        now_ms: u64,
        effects: &mut Effects,
    ) -> bool {
        if let Some(subscription) = &self.subscription {
            if subscription.plan_id == plan.plan_id {
                if subscription.seats == seats {
                    return false;
                }
                self.change_seats(seats, now_ms, effects);
                return true;
            }
            self.expire_subscription_grants(now_ms, effects);
        }
        self.subscriptions_started += 1;
        let next_reset_ms = plan.terms.period.boundary(now_ms, 1).unwrap_or(u64::MAX);
        self.subscription = Some(Subscription {
            plan_id: plan.plan_id.clone(),
            seats,
            anchor_ms: now_ms,
            anchor_index: 0,
            period_index: 0,
            next_reset_ms,
            terms: plan.terms.clone(),
            number: self.subscriptions_started,
            seat_changes_in_period: 0,
        });
        self.grant_allowance(now_ms, 0, effects);
        self.after_change(now_ms, effects);
        true
    }

    /// Ends the subscription: no further allowance; the current one stays until its period ends.
    pub(crate) fn unsubscribe(&mut self) -> bool {
        self.subscription.take().is_some()
    }

    fn change_seats(&mut self, seats: u64, now_ms: u64, effects: &mut Effects) {
        let subscription = self.subscription.as_mut().expect("a subscription");
        let added = seats.saturating_sub(subscription.seats);
        subscription.seats = seats;
        if added == 0 || !subscription.terms.per_seat {
            return;
        }
        let start = subscription
            .period_start(subscription.period_index)
            .unwrap_or(now_ms);
        let end = subscription.next_reset_ms;
        let length = u128::from(end.saturating_sub(start)).max(1);
        let left = u128::from(end.saturating_sub(now_ms));
        let full = u128::from(subscription.terms.credits_per_period) * u128::from(added);
        let amount = u64::try_from(full * left / length).unwrap_or(u64::MAX);
        subscription.seat_changes_in_period += 1;
        let grant_id = format!(
            "{}{}~seats~{}",
            subscription_prefix(subscription),
            subscription.period_index,
            subscription.seat_changes_in_period
        );
        if amount > 0 && self.has_room_for(amount) {
            self.add_grant(
                &grant_id,
                amount,
                GrantSource::Seat,
                PRIORITY_DEFAULT,
                now_ms,
                Some(end),
                now_ms,
                effects,
            );
        }
        self.after_change(now_ms, effects);
    }

    fn has_room_for(&self, amount: u64) -> bool {
        self.granted
            .checked_add(amount)
            .is_some_and(|total| total <= TOTAL_MAX)
    }

    /// Unused allowance of the ending period that rolls over, up to the plan's cap.
    fn rollover_amount(&self, at_ms: u64) -> u64 {
        let Some(subscription) = &self.subscription else {
            return 0;
        };
        let Some(cap) = subscription.terms.rollover_max else {
            return 0;
        };
        let prefix = subscription_prefix(subscription);
        let unused: u64 = self
            .grants
            .iter()
            .filter(|grant| {
                grant.is_live()
                    && grant.grant_id.starts_with(&prefix)
                    && is_expired_at(grant, at_ms)
            })
            .map(|grant| grant.remaining)
            .sum();
        unused.min(cap)
    }

    /// The period reset at `at_ms`: the next period's allowance (with the plan's current terms)
    /// and the rolled-over credits, as grants expiring at the end of the new period.
    fn start_next_period(
        &mut self,
        at_ms: u64,
        rolled_over: u64,
        catalog: &Catalog,
        effects: &mut Effects,
    ) {
        let subscription = self.subscription.as_mut().expect("a subscription");
        if let Some(plan) = catalog.plans.get(&subscription.plan_id) {
            // New terms apply from this period on; a new period length starts counting here.
            if plan.terms.period != subscription.terms.period {
                subscription.anchor_ms = at_ms;
                subscription.anchor_index = subscription.period_index + 1;
            }
            subscription.terms = plan.terms.clone();
        }
        subscription.period_index += 1;
        subscription.seat_changes_in_period = 0;
        self.grant_allowance(at_ms, rolled_over, effects);
    }

    /// Grants the allowance of the current period at `at_ms` and moves `next_reset_ms` on.
    fn grant_allowance(&mut self, at_ms: u64, rolled_over: u64, effects: &mut Effects) {
        let subscription = self.subscription.as_mut().expect("a subscription");
        let terms = subscription.terms.clone();
        let index = subscription.period_index;
        let period_end = subscription.period_start(index + 1).unwrap_or(u64::MAX);
        subscription.next_reset_ms = period_end;
        let multiplier = if terms.per_seat {
            subscription.seats
        } else {
            1
        };
        let amount = terms
            .credits_per_period
            .checked_mul(multiplier)
            .filter(|amount| *amount <= AMOUNT_MAX)
            .unwrap_or(AMOUNT_MAX);
        let prefix = subscription_prefix(subscription);
        let plan_id = subscription.plan_id.clone();
        let source = if terms.per_seat {
            GrantSource::Seat
        } else {
            GrantSource::Plan
        };
        let mut granted = 0;
        if amount > 0 && self.has_room_for(amount) {
            self.add_grant(
                &format!("{prefix}{index}"),
                amount,
                source,
                PRIORITY_DEFAULT,
                at_ms,
                Some(period_end),
                at_ms,
                effects,
            );
            granted = amount;
        }
        let mut carried = 0;
        if rolled_over > 0 && self.has_room_for(rolled_over) {
            self.add_grant(
                &format!("{prefix}{index}~rollover"),
                rolled_over,
                GrantSource::Plan,
                PRIORITY_DEFAULT,
                at_ms,
                Some(period_end),
                at_ms,
                effects,
            );
            carried = rolled_over;
        }
        effects.events.push((
            at_ms,
            EventKind::AllowanceReset {
                plan_id,
                period_index: index,
                period_start_ms: at_ms,
                period_end_ms: period_end,
                granted,
                rolled_over: carried,
            },
        ));
    }

    /// Conservation, no overspend, bounded totals and the running balance; on in release
    /// builds, after every apply and on restore.
    pub(crate) fn assert_invariants(&self) {
        let mut held_in_grants: u128 = 0;
        let mut granted_by_grants: u128 = 0;
        let mut expired_by_grants: u128 = 0;
        let mut voided_by_grants: u128 = 0;
        for (index, grant) in self.grants.iter().enumerate() {
            assert!(
                grant.remaining + grant.expired_amount + grant.voided_amount <= grant.amount,
                "account {}: grant {} accounts for more than its amount",
                self.account_id,
                grant.grant_id
            );
            assert!(
                grant.is_live() || grant.remaining == 0,
                "account {}: grant {} is expired or voided but still holds credits",
                self.account_id,
                grant.grant_id
            );
            assert_eq!(
                grant.sequence, index as u64,
                "account {}: grant {} is out of creation order",
                self.account_id, grant.grant_id
            );
            granted_by_grants += u128::from(grant.amount);
            held_in_grants += u128::from(grant.remaining);
            expired_by_grants += u128::from(grant.expired_amount);
            voided_by_grants += u128::from(grant.voided_amount);
        }
        let held_by_holds: u128 = self.holds.iter().map(|hold| u128::from(hold.amount)).sum();
        for hold in &self.holds {
            assert_eq!(
                hold.parts
                    .iter()
                    .map(|part| u128::from(part.amount))
                    .sum::<u128>(),
                u128::from(hold.amount),
                "account {}: hold {} parts do not add up",
                self.account_id,
                hold.reservation_id
            );
        }
        assert_eq!(
            held_by_holds,
            u128::from(self.reserved),
            "account {}: reserved total does not match its holds",
            self.account_id
        );
        assert_eq!(
            granted_by_grants,
            u128::from(self.granted),
            "account {}: granted total does not match its grants",
            self.account_id
        );
        assert_eq!(
            (expired_by_grants, voided_by_grants),
            (u128::from(self.expired), u128::from(self.voided)),
            "account {}: expired or voided totals do not match the grants",
            self.account_id
        );
        assert_eq!(
            u128::from(self.granted) + u128::from(self.overage),
            held_in_grants
                + u128::from(self.reserved)
                + u128::from(self.consumed)
                + u128::from(self.expired)
                + u128::from(self.voided),
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
        assert_eq!(
            self.journal_balance,
            self.balance(),
            "account {}: the journal's running balance differs from the account's",
            self.account_id
        );
    }
}

impl Subscription {
    /// Start of period `index` (at or after the anchor's period).
    fn period_start(&self, index: u64) -> Option<u64> {
        self.terms
            .period
            .boundary(self.anchor_ms, index.checked_sub(self.anchor_index)?)
    }
}

/// The prefix of the grant ids of a subscription: `~` cannot appear in a client's identifiers,
/// so these never collide with a client's grant ids.
fn subscription_prefix(subscription: &Subscription) -> String {
    format!("~{}~{}~", subscription.number, subscription.plan_id)
}

fn overage_part(parts: &[HoldPart]) -> u64 {
    parts
        .iter()
        .filter(|part| part.grant_sequence.is_none())
        .map(|part| part.amount)
        .sum()
}

/// The window of a spend limit containing `now_ms`, windows anchored at the Unix epoch.
pub(crate) fn window_containing(period: &Period, now_ms: u64) -> (u64, u64) {
    let index = period.index_at(0, now_ms);
    let start = period.boundary(0, index).unwrap_or(0);
    let end = period.boundary(0, index + 1).unwrap_or(u64::MAX);
    (start, end)
}

/// Grants are drawable in `[effective_at_ms, expires_at_ms)`.
pub(crate) fn is_expired_at(grant: &Grant, now_ms: u64) -> bool {
    grant
        .expires_at_ms
        .is_some_and(|expires_at_ms| expires_at_ms <= now_ms)
}

pub(crate) fn is_drawable_at(grant: &Grant, now_ms: u64) -> bool {
    grant.is_live()
        && grant.remaining > 0
        && grant.effective_at_ms <= now_ms
        && !is_expired_at(grant, now_ms)
}

/// Draw-down order: priority (lower first), then earliest expiry (none last), then creation.
pub(crate) fn draw_order(left: &Grant, right: &Grant) -> Ordering {
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

pub(crate) fn signed(value: u64) -> i64 {
    // Credit totals are at most `TOTAL_MAX` and overage at most AMOUNT_MAX, both within i64.
    i64::try_from(value).expect("credit totals are bounded by i64::MAX")
}

use crate::period::Period;

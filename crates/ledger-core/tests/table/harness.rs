//! A table-driven harness for the state machine, in the style of TigerBeetle's
//! `state_machine_tests.zig`: one command per line, its time stamp first and the expected outcome
//! last, so that a scenario reads top to bottom like the log it is.
//!
//! ```text
//! # time  command                                          => expected
//!     10  create  alice overdraft=5                        => account_created
//!     11  grant   alice g1 100 priority=10 expires=50      => granted
//!     12  debit   alice k1 30                              => debited amount=30 available=70
//!     12  debit   alice k1 30                              => debited amount=30 available=70 replayed
//!     13  view    alice                                    => available=70 consumed=30 grants=g1:70
//!     13  entries alice                                    => grant:100:100 debit:30:70
//! ```
//!
//! **Commands** (each applied at the line's stamp):
//! - `create ACCOUNT [overdraft=N]`, `patch ACCOUNT [overdraft=N]` (`UpdateAccount`)
//! - `grant ACCOUNT GRANT AMOUNT [priority=N] [source=NAME] [effective=T] [expires=T]`,
//!   `void ACCOUNT GRANT`
//! - `debit ACCOUNT KEY AMOUNT` or `debit ACCOUNT KEY feature=NAME qty=N`
//! - `reserve ACCOUNT RID AMOUNT ttl=MS`, `commit ACCOUNT RID AMOUNT` or
//!   `commit ACCOUNT RID feature=NAME qty=N`, `release ACCOUNT RID`
//! - `rates NAME=N,NAME=N` (or `rates -` for an empty card), `plan PLAN credits=N period=P1M
//!   [per_seat] [rollover=N]`, `webhook URL SECRET` or `webhook -` (all `UpdateCatalog`)
//! - `subscribe ACCOUNT PLAN [seats=N]`, `unsubscribe ACCOUNT`
//! - `limit ACCOUNT scope=platform|customer period=P1D [soft=N] [hard=N]` (no soft and no hard:
//!   the limit is removed), `alerts ACCOUNT [low=N,N] [topup=N] [expiring=MS]`
//! - `tick`, `ack SEQ` (`AcknowledgeEvents`)
//!
//! **Expected outcomes**: `account_created`, `account_exists`, `updated`, `granted`,
//! `voided voided=N`, `debited amount=N available=N [version=V]`, `reserved amount=N
//! expires=T available=N`, `committed amount=N released=N available=N [version=V]`,
//! `released released=N available=N [expired]`, `catalog_updated catalog=N item=N`,
//! `ticked settled=N`, or a rejection code; then `replayed` when the outcome must be a replay.
//! `version=` absent means the outcome must carry no rate card version.
//!
//! **Checks** (apply nothing; they read the ledger as of the line's stamp):
//! - `view ACCOUNT` => any of `available= balance= reserved= consumed= expired= voided= granted=
//!   overage= overdraft=`, `grants=ID:REMAINING,...` (live grants in draw-down order, `-` for
//!   none), `holds=RID:AMOUNT,...`, `plan=ID|-`, `seats=N`, `period=INDEX`, `next_reset=T`,
//!   `spent=SCOPE:N,...`; or `none` for an unknown account. Every view is also checked for
//!   conservation and no overspend, whatever the line expects.
//! - `grant_info ACCOUNT GRANT` => any of `amount= remaining= source= priority= effective=
//!   expires=` (a live grant, from the view).
//! - `entries ACCOUNT [after=SEQ]` => `KIND:AMOUNT:BALANCE[/ATTR=VALUE...]` per journal entry
//!   (the journal as of the stamp, see `Ledger::journal_at`), `-` for none. Attributes: `at`,
//!   `ref`, `src`, `f` (feature), `q` (quantity), `v` (rate card version, `-` for none),
//!   `over` (overage), `delta`.
//! - `events [ACCOUNT] [after=SEQ]` => `TYPE[/ATTR=VALUE...]` per event decided so far, `-` for
//!   none. Attributes: `at`, `account`, `threshold`, `available`, `scope`, `start`, `spent`,
//!   `limit`, `grant`, `expires`, `remaining`, `plan`, `index`, `end`, `granted`, `rolled`.
//! - `usage ACCOUNT from=T to=T` => `FEATURE:CREDITS:COUNT[:QUANTITY]` (`credits` for plain
//!   credits), `-` for none.
//! - `statement ACCOUNT from=T to=T` => any of `opening= closing= granted=SOURCE:N,...
//!   consumed=FEATURE:CREDITS:COUNT,... total= expired= voided= overage= repaid=`.
//! - `balance_at ACCOUNT at=T` => the running balance at `T`.
//! - `record ACCOUNT KEY` => the decided outcome of a debit key (no `replayed`), or `none`.
//! - `grant_record ACCOUNT GRANT` => the recorded rejection of a grant id, or `none`.
//! - `reservation ACCOUNT RID` => `active|committed|released|expired|rejected|none` as
//!   persisted (a hold that timed out stays `active` until something settles its account).
//! - `due` => the earliest instant something is due (`Ledger::next_due_ms`), or `none`.
//! - `acknowledged` => the sequence through which events were acknowledged.
//!
//! **Values**: decimal numbers (with `_`), optionally with a unit `s`, `min`, `h` or `d` (into
//! milliseconds); `amount_max`, `i64_max`, `u64_max`; UTC dates `2024-01-31` or
//! `2024-01-31T05:00:00` (milliseconds since the epoch); each optionally followed by `+N` or
//! `-N` (with the same units). Identifiers: as written, `""` for the empty one, `C*N` for N
//! times the character C.
//!
//! **Lazy and eager.** Every table runs twice: as written (accounts settle lazily, when touched),
//! and with a `Tick` applied at every instant something is due before each command (eager
//! settlement). Every command must have the same outcome in both runs (the expected `tick`
//! outcomes and the checks of persisted progress, `events`, `reservation`, `due` and
//! `acknowledged`, are only checked in the first), and at the end every account must have the
//! same view, journal and events in both.

use std::collections::BTreeMap;

use ledger_core::{
    balance_at, statement, usage, Accepted, AccountView, AlertSettings, CatalogChange, Charge,
    Command, Event, EventKind, FeatureUsage, GrantCommand, GrantSource, JournalEntry, Ledger,
    LimitScope, Outcome, Period, PlanTerms, Rejection, ReservationState, SpendLimitTerms,
    WebhookEndpoint, AMOUNT_MAX, PRIORITY_DEFAULT,
};

/// How the table is run (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Lazy,
    Eager,
}

/// Runs a table on a fresh ledger, lazily and eagerly; panics naming the line that did not match.
pub fn run_table(table: &str) {
    let lazy = run(table, Mode::Lazy);
    let eager = run(table, Mode::Eager);
    compare_lazy_and_eager(lazy, eager);
}

fn run(table: &str, mode: Mode) -> Ledger {
    let mut ledger = Ledger::new();
    for (line_index, line) in table.lines().enumerate() {
        let line_number = line_index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((input, expected)) = line.split_once("=>") else {
            panic!("table line {line_number}: no `=>` in {line:?}");
        };
        let context = || format!("table line {line_number} ({mode:?}): {line}");
        let mut words = input.split_whitespace();
        let timestamp_ms = parse_value(words.next().unwrap_or_default(), &context);
        let verb = words.next().unwrap_or_default();
        let arguments: Vec<&str> = words.collect();
        let expected: Vec<&str> = expected.split_whitespace().collect();
        let is_check = matches!(
            verb,
            "view"
                | "grant_info"
                | "entries"
                | "events"
                | "usage"
                | "statement"
                | "balance_at"
                | "record"
                | "grant_record"
                | "reservation"
                | "due"
                | "acknowledged"
        );
        // Only before commands: a check reads the ledger as of its stamp without moving the
        // ledger's clock, and so must the eager run.
        if mode == Mode::Eager && !is_check {
            settle_eagerly(&mut ledger, timestamp_ms, &context);
        }
        let checks_progress = matches!(
            verb,
            "events" | "reservation" | "due" | "acknowledged" | "tick"
        );
        if mode == Mode::Eager && checks_progress {
            continue;
        }
        match verb {
            "view" => check_view(&ledger, &arguments, timestamp_ms, &expected, &context),
            "grant_info" => {
                check_grant_info(&ledger, &arguments, timestamp_ms, &expected, &context)
            }
            "entries" => check_entries(&ledger, &arguments, timestamp_ms, &expected, &context),
            "events" => check_events(&ledger, &arguments, &expected, &context),
            "usage" => check_usage(&ledger, &arguments, timestamp_ms, &expected, &context),
            "statement" => check_statement(&ledger, &arguments, timestamp_ms, &expected, &context),
            "balance_at" => {
                check_balance_at(&ledger, &arguments, timestamp_ms, &expected, &context)
            }
            "record" => check_record(&ledger, &arguments, &expected, &context),
            "grant_record" => check_grant_record(&ledger, &arguments, &expected, &context),
            "reservation" => check_reservation(&ledger, &arguments, &expected, &context),
            "due" => {
                let wanted = match expected.as_slice() {
                    ["none"] => None,
                    [value] => Some(parse_value(value, &context)),
                    _ => panic!("{}: due expects an instant or none", context()),
                };
                assert_eq!(ledger.next_due_ms(), wanted, "{}", context());
            }
            "acknowledged" => {
                let [value] = expected.as_slice() else {
                    panic!("{}: acknowledged expects a sequence", context());
                };
                assert_eq!(
                    ledger.meta().events_acknowledged,
                    parse_value(value, &context),
                    "{}",
                    context()
                );
            }
            _ => {
                let command = parse_command(verb, &arguments, &context);
                let outcome = ledger.apply(&command, timestamp_ms);
                let wanted = parse_outcome(&expected, &context);
                assert_eq!(outcome, wanted, "{}", context());
            }
        }
    }
    ledger
}

/// Applies a `Tick` at every instant something is due, up to `until_ms`.
fn settle_eagerly(ledger: &mut Ledger, until_ms: u64, context: &dyn Fn() -> String) {
    let mut ticks = 0;
    while let Some(due_ms) = ledger.next_due_ms().filter(|due_ms| *due_ms <= until_ms) {
        let outcome = ledger.apply(&Command::Tick, due_ms);
        assert!(
            matches!(outcome.result, Ok(Accepted::Ticked { accounts_settled }) if accounts_settled > 0),
            "{}: a tick at the due instant {due_ms} settled nothing: {outcome:?}",
            context()
        );
        ticks += 1;
        assert!(ticks < 100_000, "{}: ticks do not make progress", context());
    }
}

/// At the end, both runs must agree on every account (views now and later, journals, events).
fn compare_lazy_and_eager(mut lazy: Ledger, mut eager: Ledger) {
    let final_ms = lazy.last_timestamp_ms().max(eager.last_timestamp_ms());
    for ledger in [&mut lazy, &mut eager] {
        settle_eagerly(ledger, final_ms, &|| "the end of the table".to_owned());
    }
    let lazy_accounts: Vec<String> = lazy
        .accounts()
        .map(|account| account.account_id.clone())
        .collect();
    let eager_accounts: Vec<String> = eager
        .accounts()
        .map(|account| account.account_id.clone())
        .collect();
    assert_eq!(
        lazy_accounts, eager_accounts,
        "lazy and eager runs: accounts"
    );
    for account_id in &lazy_accounts {
        for later_ms in [0, 1, 1_000, 86_400_000] {
            assert_eq!(
                lazy.view(account_id, final_ms + later_ms),
                eager.view(account_id, final_ms + later_ms),
                "lazy and eager runs: view of {account_id} at {}",
                final_ms + later_ms
            );
        }
        assert_eq!(
            lazy.journal(account_id),
            eager.journal(account_id),
            "lazy and eager runs: journal of {account_id}"
        );
        let events_of = |ledger: &Ledger| -> Vec<(u64, EventKind)> {
            ledger
                .events()
                .iter()
                .filter(|event| event.account_id == *account_id)
                .map(|event| (event.at_ms, event.kind.clone()))
                .collect()
        };
        assert_eq!(
            events_of(&lazy),
            events_of(&eager),
            "lazy and eager runs: events of {account_id}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and outcomes.
// ---------------------------------------------------------------------------------------------

/// The `key=value` options of a line, with lookups that fail naming the line.
struct Options<'a> {
    options: Vec<(&'a str, &'a str)>,
    context: &'a dyn Fn() -> String,
}

impl<'a> Options<'a> {
    fn text(&self, name: &str) -> Option<&'a str> {
        self.options
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, text)| *text)
    }

    fn value(&self, name: &str) -> Option<u64> {
        self.text(name).map(|text| parse_value(text, self.context))
    }

    fn required(&self, name: &str) -> u64 {
        self.value(name)
            .unwrap_or_else(|| panic!("{}: lacks {name}=", (self.context)()))
    }

    fn required_signed(&self, name: &str) -> i64 {
        let text = self
            .text(name)
            .unwrap_or_else(|| panic!("{}: lacks {name}=", (self.context)()));
        parse_signed(text, self.context)
    }

    fn only(&self, names: &[&str]) {
        for (key, _) in &self.options {
            assert!(
                names.contains(key),
                "{}: unknown option {key}",
                (self.context)()
            );
        }
    }
}

fn parse_command(verb: &str, arguments: &[&str], context: &dyn Fn() -> String) -> Command {
    if verb == "rates" {
        return parse_rates(arguments, context);
    }
    let (positional, options) = split_options(arguments, context);
    let options = Options { options, context };
    let identifier = |text: &str| parse_identifier(text);
    let charge = |positional: &[&str], options: &Options| -> Charge {
        match positional {
            [amount] => {
                options.only(&[]);
                Charge::Credits(parse_value(amount, context))
            }
            [] => {
                options.only(&["feature", "qty"]);
                Charge::Feature {
                    feature: identifier(options.text("feature").unwrap_or_else(|| {
                        panic!("{}: a charge is AMOUNT or feature= qty=", context())
                    })),
                    quantity: options.required("qty"),
                }
            }
            _ => panic!("{}: a charge is AMOUNT or feature= qty=", context()),
        }
    };
    match (verb, positional.as_slice()) {
        ("create", [account_id]) => {
            options.only(&["overdraft"]);
            Command::CreateAccount {
                account_id: identifier(account_id),
                overdraft_limit: options.value("overdraft").unwrap_or(0),
            }
        }
        ("patch", [account_id]) => {
            options.only(&["overdraft"]);
            Command::UpdateAccount {
                account_id: identifier(account_id),
                overdraft_limit: options.value("overdraft"),
            }
        }
        ("grant", [account_id, grant_id, amount]) => {
            options.only(&["priority", "source", "effective", "expires"]);
            let priority = options
                .value("priority")
                .unwrap_or(u64::from(PRIORITY_DEFAULT));
            Command::Grant(GrantCommand {
                account_id: identifier(account_id),
                grant_id: identifier(grant_id),
                amount: parse_value(amount, context),
                source: options
                    .text("source")
                    .map(|name| {
                        GrantSource::parse(name)
                            .unwrap_or_else(|| panic!("{}: unknown source {name}", context()))
                    })
                    .unwrap_or(GrantSource::Manual),
                priority: u8::try_from(priority)
                    .unwrap_or_else(|_| panic!("{}: priority beyond u8", context())),
                effective_at_ms: options.value("effective"),
                expires_at_ms: options.value("expires"),
            })
        }
        ("void", [account_id, grant_id]) => {
            options.only(&[]);
            Command::VoidGrant {
                account_id: identifier(account_id),
                grant_id: identifier(grant_id),
            }
        }
        ("debit", [account_id, idempotency_key, rest @ ..]) => Command::Debit {
            account_id: identifier(account_id),
            idempotency_key: identifier(idempotency_key),
            charge: charge(rest, &options),
        },
        ("reserve", [account_id, reservation_id, amount]) => {
            options.only(&["ttl"]);
            Command::Reserve {
                account_id: identifier(account_id),
                reservation_id: identifier(reservation_id),
                amount: parse_value(amount, context),
                ttl_ms: options.required("ttl"),
            }
        }
        ("commit", [account_id, reservation_id, rest @ ..]) => Command::Commit {
            account_id: identifier(account_id),
            reservation_id: identifier(reservation_id),
            charge: charge(rest, &options),
        },
        ("release", [account_id, reservation_id]) => {
            options.only(&[]);
            Command::Release {
                account_id: identifier(account_id),
                reservation_id: identifier(reservation_id),
            }
        }
        ("plan", [plan_id, flags @ ..]) => {
            options.only(&["credits", "period", "rollover"]);
            let per_seat = match flags {
                [] => false,
                ["per_seat"] => true,
                _ => panic!("{}: the only plan flag is per_seat", context()),
            };
            Command::UpdateCatalog(CatalogChange::Plan {
                plan_id: identifier(plan_id),
                terms: PlanTerms {
                    credits_per_period: options.required("credits"),
                    period: parse_period(options.text("period"), context),
                    per_seat,
                    rollover_max: options.value("rollover"),
                },
            })
        }
        ("webhook", ["-"]) => Command::UpdateCatalog(CatalogChange::Webhook { endpoint: None }),
        ("webhook", [url, secret]) => Command::UpdateCatalog(CatalogChange::Webhook {
            endpoint: Some(WebhookEndpoint {
                url: (*url).to_owned(),
                secret: (*secret).to_owned(),
            }),
        }),
        ("subscribe", [account_id, plan_id]) => {
            options.only(&["seats"]);
            Command::Subscribe {
                account_id: identifier(account_id),
                plan_id: identifier(plan_id),
                seats: options.value("seats").unwrap_or(1),
            }
        }
        ("unsubscribe", [account_id]) => {
            options.only(&[]);
            Command::Unsubscribe {
                account_id: identifier(account_id),
            }
        }
        ("limit", [account_id]) => {
            options.only(&["scope", "period", "soft", "hard"]);
            let scope_name = options.text("scope").unwrap_or("platform");
            let scope = LimitScope::parse(scope_name)
                .unwrap_or_else(|| panic!("{}: unknown scope {scope_name}", context()));
            let (soft, hard) = (options.value("soft"), options.value("hard"));
            let limit = (soft.is_some() || hard.is_some() || options.text("period").is_some())
                .then(|| SpendLimitTerms {
                    period: parse_period(options.text("period"), context),
                    soft,
                    hard,
                });
            Command::SetSpendLimit {
                account_id: identifier(account_id),
                scope,
                limit,
            }
        }
        ("alerts", [account_id]) => {
            options.only(&["low", "topup", "expiring"]);
            Command::SetAlerts {
                account_id: identifier(account_id),
                alerts: AlertSettings {
                    low_balance: options
                        .text("low")
                        .map(|list| {
                            list.split(',')
                                .map(|value| parse_signed(value, context))
                                .collect()
                        })
                        .unwrap_or_default(),
                    auto_top_up_below: options
                        .text("topup")
                        .map(|value| parse_signed(value, context)),
                    grant_expiring_within_ms: options.value("expiring"),
                },
            }
        }
        ("tick", []) => Command::Tick,
        ("ack", [through]) => Command::AcknowledgeEvents {
            through_seq: parse_value(through, context),
        },
        _ => panic!("{}: cannot read the command", context()),
    }
}

/// `rates NAME=N,NAME=N` or `rates -`.
fn parse_rates(arguments: &[&str], context: &dyn Fn() -> String) -> Command {
    let features = match arguments {
        ["-"] => BTreeMap::new(),
        [list] => list
            .split(',')
            .map(|item| {
                let (feature, price) = item
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: rates are NAME=N,...", context()));
                (parse_identifier(feature), parse_value(price, context))
            })
            .collect(),
        _ => panic!("{}: rates take one list", context()),
    };
    Command::UpdateCatalog(CatalogChange::RateCard { features })
}

/// A period as ISO 8601 text; deliberately also accepts what the ledger must refuse (`PT0S`),
/// built by hand, so that tables can check `invalid_period`.
fn parse_period(text: Option<&str>, context: &dyn Fn() -> String) -> Period {
    let text = text.unwrap_or_else(|| panic!("{}: lacks period=", context()));
    match text {
        "PT0S" => Period {
            months: 0,
            millis: 0,
        },
        "PT0.5S" => Period {
            months: 0,
            millis: 500,
        },
        _ => Period::parse(text).unwrap_or_else(|error| panic!("{}: {error}", context())),
    }
}

/// Expected outcome of a command: a result, then `replayed` if it must be a replay.
fn parse_outcome(expected: &[&str], context: &dyn Fn() -> String) -> Outcome {
    let replayed = expected.last() == Some(&"replayed");
    let words = if replayed {
        &expected[..expected.len() - 1]
    } else {
        expected
    };
    Outcome {
        result: parse_result(words, context),
        replayed,
    }
}

fn parse_result(words: &[&str], context: &dyn Fn() -> String) -> Result<Accepted, Rejection> {
    let (positional, options) = split_options(words, context);
    let options = Options { options, context };
    let result = match positional.as_slice() {
        ["account_created"] => Ok(Accepted::AccountCreated),
        ["account_exists"] => Ok(Accepted::AccountExists),
        ["updated"] => Ok(Accepted::Updated),
        ["granted"] => Ok(Accepted::Granted),
        ["voided"] => Ok(Accepted::Voided {
            voided: options.required("voided"),
        }),
        ["debited"] => Ok(Accepted::Debited {
            amount: options.required("amount"),
            available: options.required_signed("available"),
            rate_card_version: options.value("version"),
        }),
        ["reserved"] => Ok(Accepted::Reserved {
            amount: options.required("amount"),
            expires_at_ms: options.required("expires"),
            available: options.required_signed("available"),
        }),
        ["committed"] => Ok(Accepted::Committed {
            amount: options.required("amount"),
            released: options.required("released"),
            available: options.required_signed("available"),
            rate_card_version: options.value("version"),
        }),
        ["released", flags @ ..] => Ok(Accepted::Released {
            released: options.required("released"),
            available: options.required_signed("available"),
            expired: match flags {
                [] => false,
                ["expired"] => true,
                _ => panic!("{}: released takes only the flag expired", context()),
            },
        }),
        ["catalog_updated"] => Ok(Accepted::CatalogUpdated {
            catalog_version: options.required("catalog"),
            item_version: options.required("item"),
        }),
        ["catalog_installed"] => Ok(Accepted::CatalogInstalled {
            catalog_version: options.required("catalog"),
        }),
        ["ticked"] => Ok(Accepted::Ticked {
            accounts_settled: options.required("settled"),
        }),
        [code] => Err(Rejection::from_code(code)
            .unwrap_or_else(|| panic!("{}: unknown outcome {code}", context()))),
        _ => panic!("{}: cannot read the expected outcome", context()),
    };
    let allowed: &[&str] = match &result {
        Ok(Accepted::Voided { .. }) => &["voided"],
        Ok(Accepted::Debited { .. }) => &["amount", "available", "version"],
        Ok(Accepted::Reserved { .. }) => &["amount", "expires", "available"],
        Ok(Accepted::Committed { .. }) => &["amount", "released", "available", "version"],
        Ok(Accepted::Released { .. }) => &["released", "available"],
        Ok(Accepted::CatalogUpdated { .. }) => &["catalog", "item"],
        Ok(Accepted::CatalogInstalled { .. }) => &["catalog"],
        Ok(Accepted::Ticked { .. }) => &["settled"],
        _ => &[],
    };
    options.only(allowed);
    result
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

fn one_account(arguments: &[&str], verb: &str, context: &dyn Fn() -> String) -> String {
    match arguments {
        [account_id] => parse_identifier(account_id),
        _ => panic!("{}: {verb} takes one account", context()),
    }
}

/// Conservation and no overspend, from the view's public fields, whatever the line expects.
fn check_view_invariants(view: &AccountView, context: &dyn Fn() -> String) {
    let remaining: u128 = view
        .grants
        .iter()
        .map(|grant| u128::from(grant.remaining))
        .sum();
    assert_eq!(
        u128::from(view.granted) + u128::from(view.overage),
        remaining
            + u128::from(view.reserved)
            + u128::from(view.consumed)
            + u128::from(view.expired)
            + u128::from(view.voided),
        "{}: conservation",
        context()
    );
    assert_eq!(
        i128::from(view.balance),
        remaining as i128 - i128::from(view.overage),
        "{}: balance is the live remainder minus overage",
        context()
    );
    assert!(
        i128::from(view.available) >= -i128::from(view.overdraft_limit),
        "{}: available below the overdraft limit",
        context()
    );
    assert_eq!(
        view.holds
            .iter()
            .map(|hold| u128::from(hold.amount))
            .sum::<u128>(),
        u128::from(view.reserved),
        "{}: reserved is the sum of the holds",
        context()
    );
}

fn check_view(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let account_id = one_account(arguments, "view", context);
    let view = ledger.view(&account_id, timestamp_ms);
    if expected == ["none"] {
        assert_eq!(view, None, "{}", context());
        return;
    }
    let view = view.unwrap_or_else(|| panic!("{}: the account does not exist", context()));
    check_view_invariants(&view, context);
    let (positional, options) = split_options(expected, context);
    assert!(positional.is_empty(), "{}: stray words", context());
    assert!(
        !options.is_empty(),
        "{}: a view line must check something",
        context()
    );
    for (key, text) in options {
        let field = |name: &str| format!("{} ({name})", context());
        let number = |actual: u64| assert_eq!(actual, parse_value(text, context), "{}", field(key));
        match key {
            "available" => {
                assert_eq!(
                    view.available,
                    parse_signed(text, context),
                    "{}",
                    field(key)
                )
            }
            "balance" => assert_eq!(view.balance, parse_signed(text, context), "{}", field(key)),
            "reserved" => number(view.reserved),
            "consumed" => number(view.consumed),
            "expired" => number(view.expired),
            "voided" => number(view.voided),
            "granted" => number(view.granted),
            "overage" => number(view.overage),
            "overdraft" => number(view.overdraft_limit),
            "grants" => {
                let actual: Vec<(String, u64)> = view
                    .grants
                    .iter()
                    .map(|grant| (grant.grant_id.clone(), grant.remaining))
                    .collect();
                assert_eq!(actual, parse_pairs(text, context), "{}", field(key));
            }
            "holds" => {
                let actual: Vec<(String, u64)> = view
                    .holds
                    .iter()
                    .map(|hold| (hold.reservation_id.clone(), hold.amount))
                    .collect();
                assert_eq!(actual, parse_pairs(text, context), "{}", field(key));
            }
            "plan" => assert_eq!(
                view.subscription.as_ref().map(|s| s.plan_id.clone()),
                (text != "-").then(|| parse_identifier(text)),
                "{}",
                field(key)
            ),
            "seats" | "period" | "next_reset" => {
                let subscription = view
                    .subscription
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: no subscription", field(key)));
                number(match key {
                    "seats" => subscription.seats,
                    "period" => subscription.period_index,
                    _ => subscription.next_reset_ms,
                })
            }
            "spent" => {
                let actual: Vec<(String, u64)> = view
                    .limits
                    .iter()
                    .map(|(scope, limit)| (scope.as_str().to_owned(), limit.spent))
                    .collect();
                assert_eq!(actual, parse_pairs(text, context), "{}", field(key));
            }
            _ => panic!("{}: unknown view field {key}", context()),
        }
    }
}

fn check_grant_info(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let [account_id, grant_id] = arguments else {
        panic!("{}: grant_info takes an account and a grant id", context());
    };
    let view = ledger
        .view(&parse_identifier(account_id), timestamp_ms)
        .unwrap_or_else(|| panic!("{}: the account does not exist", context()));
    let grant_id = parse_identifier(grant_id);
    let grant = view
        .grants
        .iter()
        .find(|grant| grant.grant_id == grant_id)
        .unwrap_or_else(|| panic!("{}: no live grant {grant_id}", context()));
    let (positional, options) = split_options(expected, context);
    assert!(
        positional.is_empty() && !options.is_empty(),
        "{}: expects fields",
        context()
    );
    for (key, text) in options {
        let field = format!("{} ({key})", context());
        match key {
            "amount" => assert_eq!(grant.amount, parse_value(text, context), "{field}"),
            "remaining" => assert_eq!(grant.remaining, parse_value(text, context), "{field}"),
            "source" => assert_eq!(grant.source.as_str(), text, "{field}"),
            "priority" => assert_eq!(
                u64::from(grant.priority),
                parse_value(text, context),
                "{field}"
            ),
            "effective" => assert_eq!(grant.effective_at_ms, parse_value(text, context), "{field}"),
            "expires" => assert_eq!(
                grant.expires_at_ms,
                (text != "none").then(|| parse_value(text, context)),
                "{field}"
            ),
            _ => panic!("{}: unknown grant field {key}", context()),
        }
    }
}

/// Compares actual items, each a kind with attributes, with expected `KIND[/ATTR=VALUE...]`
/// tokens: the kinds in order, and each attribute the token names.
fn compare_items(
    what: &str,
    actual: &[(String, BTreeMap<&'static str, String>)],
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let expected: Vec<&str> = if expected == ["-"] {
        Vec::new()
    } else {
        expected.to_vec()
    };
    let listing = || {
        actual
            .iter()
            .map(|(kind, attributes)| format!("{kind} {attributes:?}"))
            .collect::<Vec<_>>()
            .join("\n    ")
    };
    assert_eq!(
        actual.len(),
        expected.len(),
        "{}: {what}: expected {} items, the ledger has:\n    {}",
        context(),
        expected.len(),
        listing()
    );
    for (index, ((kind, attributes), token)) in actual.iter().zip(expected).enumerate() {
        let mut parts = token.split('/');
        let wanted_kind = parts.next().unwrap_or_default();
        assert_eq!(
            kind,
            wanted_kind,
            "{}: {what} item {index}; the ledger has:\n    {}",
            context(),
            listing()
        );
        for part in parts {
            let (name, wanted) = part
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: attribute {part} is not NAME=VALUE", context()));
            let actual_value = attributes.get(name).unwrap_or_else(|| {
                panic!(
                    "{}: {what} item {index} ({kind}) has no attribute {name}",
                    context()
                )
            });
            let matches = match (actual_value.parse::<i128>(), wanted) {
                (_, "-") => actual_value == "-",
                (Ok(number), _) => number == parse_signed_wide(wanted, context),
                (Err(_), _) => *actual_value == parse_identifier(wanted),
            };
            assert!(
                matches,
                "{}: {what} item {index} ({kind}): {name} is {actual_value}, expected {wanted}; \
                 the ledger has:\n    {}",
                context(),
                listing()
            );
        }
    }
}

/// `KIND:AMOUNT:BALANCE` tokens become a kind `KIND:AMOUNT:BALANCE` with attributes.
fn entry_item(entry: &JournalEntry) -> (String, BTreeMap<&'static str, String>) {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let attributes = BTreeMap::from([
        ("at", entry.at_ms.to_string()),
        ("ref", entry.reference.clone()),
        (
            "src",
            optional(entry.source.map(|source| source.as_str().to_owned())),
        ),
        ("f", optional(entry.feature.clone())),
        ("q", optional(entry.quantity.map(|q| q.to_string()))),
        (
            "v",
            optional(entry.rate_card_version.map(|v| v.to_string())),
        ),
        ("over", entry.overage.to_string()),
        ("delta", entry.delta.to_string()),
    ]);
    (
        format!("{}:{}:{}", entry.kind.as_str(), entry.amount, entry.balance),
        attributes,
    )
}

fn check_entries(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let (positional, options) = split_options(arguments, context);
    let options = Options { options, context };
    options.only(&["after"]);
    let account_id = one_account(&positional, "entries", context);
    let entries = ledger
        .journal_at(&account_id, timestamp_ms)
        .unwrap_or_else(|| panic!("{}: the account does not exist", context()));
    // The persisted journal is what the settlement through the stamp extends.
    let persisted = ledger.journal(&account_id);
    assert_eq!(
        &entries[..persisted.len()],
        persisted.to_vec(),
        "{}: persisted prefix",
        context()
    );
    let after = options.value("after").unwrap_or(0);
    // Normalize the expected tokens: numbers in KIND:AMOUNT:BALANCE may use the value notation.
    let normalized: Vec<String> = expected
        .iter()
        .map(|token| {
            if *token == "-" {
                return (*token).to_owned();
            }
            let (head, attributes) = token.split_once('/').unwrap_or((*token, ""));
            let fields: Vec<&str> = head.split(':').collect();
            let [kind, amount, balance] = fields.as_slice() else {
                panic!(
                    "{}: an entry is KIND:AMOUNT:BALANCE, not {token}",
                    context()
                );
            };
            let head = format!(
                "{kind}:{}:{}",
                parse_value(amount, context),
                parse_signed(balance, context)
            );
            if attributes.is_empty() {
                head
            } else {
                format!("{head}/{attributes}")
            }
        })
        .collect();
    let normalized: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let actual: Vec<_> = entries
        .iter()
        .filter(|entry| entry.sequence > after)
        .map(entry_item)
        .collect();
    compare_items("entries", &actual, &normalized, context);
    for (index, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.sequence,
            index as u64 + 1,
            "{}: entry sequence",
            context()
        );
        let before = index
            .checked_sub(1)
            .map_or(0, |previous| entries[previous].balance);
        assert_eq!(
            entry.balance,
            before + entry.delta,
            "{}: running balance",
            context()
        );
    }
}

fn event_item(event: &Event) -> (String, BTreeMap<&'static str, String>) {
    let mut attributes = BTreeMap::from([
        ("at", event.at_ms.to_string()),
        ("account", event.account_id.clone()),
    ]);
    let mut put = |name: &'static str, value: String| {
        attributes.insert(name, value);
    };
    match &event.kind {
        EventKind::LowBalance {
            threshold,
            available,
        }
        | EventKind::AutoTopUpWanted {
            threshold,
            available,
        } => {
            put("threshold", threshold.to_string());
            put("available", available.to_string());
        }
        EventKind::SoftLimitReached {
            scope,
            window_start_ms,
            spent,
            limit,
        }
        | EventKind::HardLimitReached {
            scope,
            window_start_ms,
            spent,
            limit,
        } => {
            put("scope", scope.as_str().to_owned());
            put("start", window_start_ms.to_string());
            put("spent", spent.to_string());
            put("limit", limit.to_string());
        }
        EventKind::GrantExpiring {
            grant_id,
            expires_at_ms,
            remaining,
        } => {
            put("grant", grant_id.clone());
            put("expires", expires_at_ms.to_string());
            put("remaining", remaining.to_string());
        }
        EventKind::AllowanceReset {
            plan_id,
            period_index,
            period_start_ms,
            period_end_ms,
            granted,
            rolled_over,
        } => {
            put("plan", plan_id.clone());
            put("index", period_index.to_string());
            put("start", period_start_ms.to_string());
            put("end", period_end_ms.to_string());
            put("granted", granted.to_string());
            put("rolled", rolled_over.to_string());
        }
    }
    (event.kind.type_name().to_owned(), attributes)
}

fn check_events(
    ledger: &Ledger,
    arguments: &[&str],
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let (positional, options) = split_options(arguments, context);
    let options = Options { options, context };
    options.only(&["after"]);
    let account = match positional.as_slice() {
        [] => None,
        [account_id] => Some(parse_identifier(account_id)),
        _ => panic!("{}: events takes at most one account", context()),
    };
    let after = options.value("after").unwrap_or(0);
    for (index, event) in ledger.events().iter().enumerate() {
        assert_eq!(
            event.sequence,
            index as u64 + 1,
            "{}: event sequence",
            context()
        );
    }
    assert_eq!(
        ledger
            .events_after(after, usize::MAX)
            .first()
            .map(|event| event.sequence),
        ledger
            .events()
            .get(after as usize)
            .map(|event| event.sequence),
        "{}: events_after",
        context()
    );
    let actual: Vec<_> = ledger
        .events_after(after, usize::MAX)
        .iter()
        .filter(|event| account.as_ref().is_none_or(|id| event.account_id == *id))
        .map(event_item)
        .collect();
    compare_items("events", &actual, expected, context);
}

/// `from=` and `to=` of a report line, and its account.
fn report_window(arguments: &[&str], context: &dyn Fn() -> String) -> (String, u64, u64) {
    let (positional, options) = split_options(arguments, context);
    let options = Options { options, context };
    options.only(&["from", "to"]);
    (
        one_account(&positional, "a report", context),
        options.required("from"),
        options.required("to"),
    )
}

fn journal_as_of(
    ledger: &Ledger,
    account_id: &str,
    timestamp_ms: u64,
    context: &dyn Fn() -> String,
) -> Vec<JournalEntry> {
    ledger
        .journal_at(account_id, timestamp_ms)
        .unwrap_or_else(|| panic!("{}: the account does not exist", context()))
}

fn usage_token(usage: &FeatureUsage, with_quantity: bool) -> String {
    let feature = usage.feature.as_deref().unwrap_or("credits");
    if with_quantity {
        format!(
            "{feature}:{}:{}:{}",
            usage.credits, usage.count, usage.quantity
        )
    } else {
        format!("{feature}:{}:{}", usage.credits, usage.count)
    }
}

/// Compares usage lists with `FEATURE:CREDITS:COUNT[:QUANTITY]` tokens.
fn compare_usage(
    actual: &[FeatureUsage],
    expected: &[&str],
    what: &str,
    context: &dyn Fn() -> String,
) {
    let expected: Vec<&str> = if expected == ["-"] {
        Vec::new()
    } else {
        expected.to_vec()
    };
    let actual_tokens: Vec<String> = actual
        .iter()
        .zip(expected.iter().chain(std::iter::repeat(&"")))
        .map(|(usage, token)| usage_token(usage, token.split(':').count() == 4))
        .collect();
    let expected: Vec<String> = expected
        .iter()
        .map(|token| {
            let mut fields = token.split(':');
            let feature = fields.next().unwrap_or_default();
            let numbers: Vec<String> = fields
                .map(|value| parse_value(value, context).to_string())
                .collect();
            format!("{feature}:{}", numbers.join(":"))
        })
        .collect();
    assert_eq!(actual_tokens, expected, "{}: {what}", context());
}

fn check_usage(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let (account_id, from_ms, to_ms) = report_window(arguments, context);
    let entries = journal_as_of(ledger, &account_id, timestamp_ms, context);
    compare_usage(&usage(&entries, from_ms, to_ms), expected, "usage", context);
}

fn check_statement(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let (account_id, from_ms, to_ms) = report_window(arguments, context);
    let entries = journal_as_of(ledger, &account_id, timestamp_ms, context);
    let statement = statement(&entries, from_ms, to_ms);
    assert_eq!(
        (statement.from_ms, statement.to_ms),
        (from_ms, to_ms),
        "{}",
        context()
    );
    assert_eq!(
        statement.consumed_total,
        statement
            .consumed
            .iter()
            .map(|usage| usage.credits)
            .sum::<u64>(),
        "{}: the total is the sum of the features",
        context()
    );
    let (positional, options) = split_options(expected, context);
    assert!(
        positional.is_empty() && !options.is_empty(),
        "{}: expects fields",
        context()
    );
    for (key, text) in options {
        let field = format!("{} ({key})", context());
        match key {
            "opening" => assert_eq!(
                statement.opening_balance,
                parse_signed(text, context),
                "{field}"
            ),
            "closing" => assert_eq!(
                statement.closing_balance,
                parse_signed(text, context),
                "{field}"
            ),
            "granted" => {
                let actual: Vec<(String, u64)> = statement
                    .granted
                    .iter()
                    .map(|(source, amount)| (source.as_str().to_owned(), *amount))
                    .collect();
                assert_eq!(actual, parse_pairs(text, context), "{field}");
            }
            "consumed" => {
                let tokens: Vec<&str> = if text == "-" {
                    vec!["-"]
                } else {
                    text.split(',').collect()
                };
                compare_usage(&statement.consumed, &tokens, "statement consumed", context);
            }
            "total" => assert_eq!(
                statement.consumed_total,
                parse_value(text, context),
                "{field}"
            ),
            "expired" => assert_eq!(statement.expired, parse_value(text, context), "{field}"),
            "voided" => assert_eq!(statement.voided, parse_value(text, context), "{field}"),
            "overage" => assert_eq!(statement.overage, parse_value(text, context), "{field}"),
            "repaid" => assert_eq!(
                statement.overage_repaid,
                parse_value(text, context),
                "{field}"
            ),
            _ => panic!("{}: unknown statement field {key}", context()),
        }
    }
}

fn check_balance_at(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let (positional, options) = split_options(arguments, context);
    let options = Options { options, context };
    options.only(&["at"]);
    let account_id = one_account(&positional, "balance_at", context);
    let entries = journal_as_of(ledger, &account_id, timestamp_ms, context);
    let [wanted] = expected else {
        panic!("{}: balance_at expects one balance", context());
    };
    assert_eq!(
        balance_at(&entries, options.required("at")),
        parse_signed(wanted, context),
        "{}",
        context()
    );
}

fn check_record(
    ledger: &Ledger,
    arguments: &[&str],
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let [account_id, idempotency_key] = arguments else {
        panic!("{}: record takes an account and a key", context());
    };
    let record = ledger.debit_record(
        &parse_identifier(account_id),
        &parse_identifier(idempotency_key),
    );
    if expected == ["none"] {
        assert_eq!(record, None, "{}", context());
        return;
    }
    let record = record.unwrap_or_else(|| panic!("{}: no record", context()));
    assert_eq!(
        record.result,
        parse_result(expected, context),
        "{}",
        context()
    );
}

fn check_grant_record(
    ledger: &Ledger,
    arguments: &[&str],
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let [account_id, grant_id] = arguments else {
        panic!(
            "{}: grant_record takes an account and a grant id",
            context()
        );
    };
    let record = ledger.grant_record(&parse_identifier(account_id), &parse_identifier(grant_id));
    match expected {
        ["none"] => assert_eq!(record, None, "{}", context()),
        [code] => {
            let wanted = Rejection::from_code(code)
                .unwrap_or_else(|| panic!("{}: unknown rejection {code}", context()));
            let record = record.unwrap_or_else(|| panic!("{}: no grant record", context()));
            assert_eq!(record.rejection, wanted, "{}", context());
        }
        _ => panic!("{}: expected a rejection code or none", context()),
    }
}

fn check_reservation(
    ledger: &Ledger,
    arguments: &[&str],
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let [account_id, reservation_id] = arguments else {
        panic!(
            "{}: reservation takes an account and a reservation id",
            context()
        );
    };
    let reservation = ledger.reservation(
        &parse_identifier(account_id),
        &parse_identifier(reservation_id),
    );
    let actual = match reservation.map(|reservation| &reservation.state) {
        None => "none",
        Some(ReservationState::Active) => "active",
        Some(ReservationState::Committed { .. }) => "committed",
        Some(ReservationState::Released { .. }) => "released",
        Some(ReservationState::Expired { .. }) => "expired",
        Some(ReservationState::Rejected { .. }) => "rejected",
    };
    assert_eq!([actual].as_slice(), expected, "{}", context());
}

// ---------------------------------------------------------------------------------------------
// Words and values.
// ---------------------------------------------------------------------------------------------

/// Splits `key=value` words from the others, keeping their order.
fn split_options<'a>(
    words: &[&'a str],
    context: &dyn Fn() -> String,
) -> (Vec<&'a str>, Vec<(&'a str, &'a str)>) {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some((key, value)) => {
                assert!(!value.is_empty(), "{}: empty value for {key}", context());
                options.push((key, value));
            }
            None => positional.push(*word),
        }
    }
    (positional, options)
}

/// `NAME:N,NAME:N` (the name may itself contain `:`; the number is after the last one), or `-`.
fn parse_pairs(text: &str, context: &dyn Fn() -> String) -> Vec<(String, u64)> {
    if text == "-" {
        return Vec::new();
    }
    text.split(',')
        .map(|item| {
            let (name, value) = item
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{}: {item} is not NAME:N", context()));
            (parse_identifier(name), parse_value(value, context))
        })
        .collect()
}

fn parse_identifier(text: &str) -> String {
    if text == "\"\"" {
        return String::new();
    }
    if let Some((character, count)) = text.split_once('*') {
        if let (Some(character), Ok(count)) = (character.chars().next(), count.parse::<usize>()) {
            return character.to_string().repeat(count);
        }
    }
    text.to_owned()
}

fn parse_value(text: &str, context: &dyn Fn() -> String) -> u64 {
    let value = parse_signed_wide(text, context);
    u64::try_from(value).unwrap_or_else(|_| panic!("{}: {text} is not a u64", context()))
}

fn parse_signed(text: &str, context: &dyn Fn() -> String) -> i64 {
    let value = parse_signed_wide(text, context);
    i64::try_from(value).unwrap_or_else(|_| panic!("{}: {text} is not an i64", context()))
}

const MILLIS_PER_DAY: i128 = 86_400_000;

/// `[-]BASE[+N|-N]...` where BASE is a number (with an optional unit), a named bound or a date.
fn parse_signed_wide(text: &str, context: &dyn Fn() -> String) -> i128 {
    let fail = || -> ! { panic!("{}: cannot read the value {text:?}", context()) };
    let (negative, body) = match text.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, text),
    };
    // A date is `YYYY-MM-DD[THH:MM[:SS]]`: its dashes are not offsets.
    let is_date = body.len() >= 10 && body.as_bytes()[4] == b'-' && body.as_bytes()[7] == b'-';
    let (base_text, mut rest) = if is_date {
        let end = if body.as_bytes().get(10) == Some(&b'T') {
            10 + 1
                + body[11..]
                    .find(|character: char| !(character.is_ascii_digit() || character == ':'))
                    .unwrap_or(body.len() - 11)
        } else {
            10
        };
        body.split_at(end)
    } else {
        body.split_at(body.find(['+', '-']).unwrap_or(body.len()))
    };
    let mut value: i128 = match base_text {
        "amount_max" => i128::from(AMOUNT_MAX),
        "i64_max" => i128::from(i64::MAX),
        "u64_max" => i128::from(u64::MAX),
        date if is_date => parse_date(date).unwrap_or_else(|| fail()),
        number => parse_number(number).unwrap_or_else(|| fail()),
    };
    while !rest.is_empty() {
        let sign: i128 = if rest.starts_with('+') { 1 } else { -1 };
        let term_end = rest[1..].find(['+', '-']).map_or(rest.len(), |end| end + 1);
        value += sign * parse_number(&rest[1..term_end]).unwrap_or_else(|| fail());
        rest = &rest[term_end..];
    }
    if negative {
        -value
    } else {
        value
    }
}

/// A decimal number with `_` separators and an optional unit (into milliseconds).
fn parse_number(text: &str) -> Option<i128> {
    let digits_end = text
        .find(|character: char| !(character.is_ascii_digit() || character == '_'))
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let number: i128 = digits.replace('_', "").parse().ok()?;
    let scale = match unit {
        "" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => MILLIS_PER_DAY,
        _ => return None,
    };
    Some(number * scale)
}

/// `YYYY-MM-DD[THH:MM[:SS]]` in UTC, as milliseconds since the Unix epoch. Counted day by day
/// from 1970 with the Gregorian leap rule, deliberately not with the ledger's own calendar code.
fn parse_date(text: &str) -> Option<i128> {
    let (date, time) = text.split_once('T').unwrap_or((text, ""));
    let mut date_fields = date.split('-').map(|field| field.parse::<i128>());
    let (year, month, day) = (
        date_fields.next()?.ok()?,
        date_fields.next()?.ok()?,
        date_fields.next()?.ok()?,
    );
    let is_leap = |year: i128| (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_lengths = |year: i128| -> [i128; 12] {
        [
            31,
            if is_leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ]
    };
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=month_lengths(year)[(month - 1) as usize]).contains(&day)
    {
        return None;
    }
    let mut days: i128 = (1970..year)
        .map(|year| if is_leap(year) { 366 } else { 365 })
        .sum();
    days += month_lengths(year)[..(month - 1) as usize]
        .iter()
        .sum::<i128>();
    days += day - 1;
    let mut millis = days * MILLIS_PER_DAY;
    if !time.is_empty() {
        let scales = [3_600_000, 60_000, 1_000];
        for (field, scale) in time.split(':').zip(scales) {
            millis += field.parse::<i128>().ok()? * scale;
        }
    }
    Some(millis)
}

/// The harness must itself be right: a table that expects the wrong thing has to fail.
#[test]
fn harness_catches_a_wrong_expectation() {
    let wrong_tables = [
        "10 create a => account_created
         11 debit  a k1 5 => debited amount=5 available=0",
        "10 create a => account_created
         11 grant  a g1 5 => granted
         12 entries a => grant:5:4",
        "10 create a => account_created
         11 grant  a g1 5 expires=20 => granted
         30 view a => expired=4",
        "10 create a => account_created
         10 alerts a low=10 => updated
         10 events => -",
    ];
    for table in wrong_tables {
        let result = std::panic::catch_unwind(|| run_table(table));
        assert!(result.is_err(), "a wrong expectation passed:\n{table}");
    }
}

/// The value notation, checked against dates computed elsewhere (`date -u -d ... +%s`).
#[test]
fn values_and_dates_parse() {
    let context = || "values".to_owned();
    assert_eq!(parse_value("1970-01-01", &context), 0);
    assert_eq!(parse_value("2024-01-31", &context), 1_706_659_200_000);
    assert_eq!(
        parse_value("2024-02-29T05:00:00", &context),
        1_709_182_800_000
    );
    assert_eq!(
        parse_value("2024-03-01+10s", &context),
        1_709_251_200_000 + 10_000
    );
    assert_eq!(parse_value("2024-03-01-1", &context), 1_709_251_199_999);
    assert_eq!(parse_value("1_000+2-3", &context), 999);
    assert_eq!(parse_signed("-5", &context), -5);
    assert_eq!(parse_value("2d", &context), 172_800_000);
    assert_eq!(parse_value("amount_max+1", &context), AMOUNT_MAX + 1);
}

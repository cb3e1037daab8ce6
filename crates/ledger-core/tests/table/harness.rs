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
//!     13  view    alice                                    => available=70 consumed=30 expired=0 grants=g1:70
//!     13  record  alice k1                                 => debited amount=30 available=70
//!     14  grant   ghost g1 5                               => account_not_found
//!     14  grant_record ghost g1                            => account_not_found
//! ```
//!
//! Commands: `create ACCOUNT [overdraft=N]`, `grant ACCOUNT GRANT AMOUNT [priority=N]
//! [source=NAME] [effective=T] [expires=T]`, `debit ACCOUNT KEY AMOUNT`. Checks that apply
//! nothing: `view ACCOUNT` (the account at that time), `record ACCOUNT KEY` (the decided
//! outcome of a debit key) and `grant_record ACCOUNT GRANT` (the recorded rejection of a grant
//! id).
//!
//! Expected outcomes: `account_created`, `account_exists`, `granted`, `debited amount=N
//! available=N`, or a rejection code; `replayed` when the outcome must be a replay. For `view`:
//! any of `available=`, `consumed=`, `expired=`, `overdraft=`, `grants=ID:REMAINING,...` (in
//! draw-down order, `-` for none), or `none`. For `record`: an outcome without `replayed`, or
//! `none`. For `grant_record`: a rejection code, or `none`.
//!
//! Values: decimal numbers (with `_`), `amount_max`, `i64_max`, `u64_max`, each optionally `+N`
//! or `-N`. Identifiers: as written, `""` for the empty one, `C*N` for N times the character C.

use ledger_core::{
    Accepted, Command, GrantCommand, GrantSource, Ledger, Outcome, Rejection, AMOUNT_MAX,
    PRIORITY_DEFAULT,
};

/// Runs a table on a fresh ledger; panics naming the line that did not match.
pub fn run_table(table: &str) {
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
        let context = || format!("table line {line_number}: {line}");
        let mut words = input.split_whitespace();
        let timestamp_ms = parse_value(words.next().unwrap_or_default(), &context);
        let verb = words.next().unwrap_or_default();
        let arguments: Vec<&str> = words.collect();
        let expected: Vec<&str> = expected.split_whitespace().collect();
        match verb {
            "view" => check_view(&ledger, &arguments, timestamp_ms, &expected, &context),
            "record" => check_record(&ledger, &arguments, &expected, &context),
            "grant_record" => check_grant_record(&ledger, &arguments, &expected, &context),
            _ => {
                let command = parse_command(verb, &arguments, &context);
                let mut changes = Default::default();
                let outcome = ledger.apply(&command, timestamp_ms, &mut changes);
                let wanted = parse_outcome(&expected, &context);
                assert_eq!(outcome, wanted, "{}", context());
            }
        }
    }
}

fn parse_command(verb: &str, arguments: &[&str], context: &dyn Fn() -> String) -> Command {
    let (positional, options) = split_options(arguments, context);
    let option = |name: &str| {
        options
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, v)| *v)
    };
    let value = |name: &str| option(name).map(|text| parse_value(text, context));
    let known = |names: &[&str]| {
        for (key, _) in &options {
            assert!(names.contains(key), "{}: unknown option {key}", context());
        }
    };
    match (verb, positional.as_slice()) {
        ("create", [account_id]) => {
            known(&["overdraft"]);
            Command::CreateAccount {
                account_id: parse_identifier(account_id),
                overdraft_limit: value("overdraft").unwrap_or(0),
            }
        }
        ("grant", [account_id, grant_id, amount]) => {
            known(&["priority", "source", "effective", "expires"]);
            let priority = value("priority").unwrap_or(u64::from(PRIORITY_DEFAULT));
            Command::Grant(GrantCommand {
                account_id: parse_identifier(account_id),
                grant_id: parse_identifier(grant_id),
                amount: parse_value(amount, context),
                source: option("source")
                    .map(|name| {
                        GrantSource::parse(name)
                            .unwrap_or_else(|| panic!("{}: unknown source {name}", context()))
                    })
                    .unwrap_or(GrantSource::Manual),
                priority: u8::try_from(priority)
                    .unwrap_or_else(|_| panic!("{}: priority beyond u8", context())),
                effective_at_ms: value("effective"),
                expires_at_ms: value("expires"),
            })
        }
        ("debit", [account_id, idempotency_key, amount]) => {
            known(&[]);
            Command::Debit {
                account_id: parse_identifier(account_id),
                idempotency_key: parse_identifier(idempotency_key),
                amount: parse_value(amount, context),
            }
        }
        _ => panic!("{}: cannot read the command", context()),
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
    let value = |name: &str| {
        let text = options
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, text)| *text)
            .unwrap_or_else(|| panic!("{}: expected outcome lacks {name}=", context()));
        parse_value(text, context)
    };
    match positional.as_slice() {
        ["account_created"] => Ok(Accepted::AccountCreated),
        ["account_exists"] => Ok(Accepted::AccountExists),
        ["granted"] => Ok(Accepted::Granted),
        ["debited"] => Ok(Accepted::Debited {
            amount: value("amount"),
            available: parse_signed(
                options
                    .iter()
                    .find(|(key, _)| *key == "available")
                    .map(|(_, text)| *text)
                    .unwrap_or_else(|| panic!("{}: debited lacks available=", context())),
                context,
            ),
        }),
        [code] => Err(Rejection::from_code(code)
            .unwrap_or_else(|| panic!("{}: unknown outcome {code}", context()))),
        _ => panic!("{}: cannot read the expected outcome", context()),
    }
}

fn check_view(
    ledger: &Ledger,
    arguments: &[&str],
    timestamp_ms: u64,
    expected: &[&str],
    context: &dyn Fn() -> String,
) {
    let [account_id] = arguments else {
        panic!("{}: view takes one account", context());
    };
    let view = ledger.view(&parse_identifier(account_id), timestamp_ms);
    if expected == ["none"] {
        assert_eq!(view, None, "{}", context());
        return;
    }
    let view = view.unwrap_or_else(|| panic!("{}: the account does not exist", context()));
    let (positional, options) = split_options(expected, context);
    assert!(positional.is_empty(), "{}: stray words", context());
    assert!(
        !options.is_empty(),
        "{}: a view line must check something",
        context()
    );
    for (key, text) in options {
        match key {
            "available" => assert_eq!(
                view.available,
                parse_signed(text, context),
                "{} (available)",
                context()
            ),
            "consumed" => assert_eq!(
                view.consumed,
                parse_value(text, context),
                "{} (consumed)",
                context()
            ),
            "expired" => assert_eq!(
                view.expired,
                parse_value(text, context),
                "{} (expired)",
                context()
            ),
            "overdraft" => assert_eq!(
                view.overdraft_limit,
                parse_value(text, context),
                "{} (overdraft)",
                context()
            ),
            "grants" => {
                let actual: Vec<(String, u64)> = view
                    .grants
                    .iter()
                    .map(|grant| (grant.grant_id.clone(), grant.remaining))
                    .collect();
                let wanted: Vec<(String, u64)> = if text == "-" {
                    Vec::new()
                } else {
                    text.split(',')
                        .map(|item| {
                            let (grant_id, remaining) =
                                item.rsplit_once(':').unwrap_or_else(|| {
                                    panic!("{}: grants are ID:REMAINING", context())
                                });
                            (parse_identifier(grant_id), parse_value(remaining, context))
                        })
                        .collect()
                };
                assert_eq!(actual, wanted, "{} (grants)", context());
            }
            _ => panic!("{}: unknown view field {key}", context()),
        }
    }
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

/// `[-]BASE[+N|-N]` where BASE is a number or a named bound.
fn parse_signed_wide(text: &str, context: &dyn Fn() -> String) -> i128 {
    let fail = || panic!("{}: cannot read the value {text:?}", context());
    let (negative, body) = match text.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let (base, offset) = match body.find(['+', '-']) {
        Some(position) => {
            let (base, offset) = body.split_at(position);
            let magnitude: i128 = offset[1..]
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| fail());
            (
                base,
                if offset.starts_with('-') {
                    -magnitude
                } else {
                    magnitude
                },
            )
        }
        None => (body, 0),
    };
    let base: i128 = match base {
        "amount_max" => i128::from(AMOUNT_MAX),
        "i64_max" => i128::from(i64::MAX),
        "u64_max" => i128::from(u64::MAX),
        number => number.replace('_', "").parse().unwrap_or_else(|_| fail()),
    };
    let value = base + offset;
    if negative {
        -value
    } else {
        value
    }
}

/// The harness must itself be right: a table that expects the wrong thing has to fail.
#[test]
fn harness_catches_a_wrong_expectation() {
    let result = std::panic::catch_unwind(|| {
        run_table(
            "10 create a => account_created
             11 debit  a k1 5 => debited amount=5 available=0",
        )
    });
    assert!(
        result.is_err(),
        "a debit without credits must not match `debited`"
    );
}

//! The history of a run: every client operation recorded as an invocation, then exactly one
//! completion: `ok` (the ledger gave a decided answer: an accepted or a rejected debit, a grant,
//! a read), `fail` (certainly not applied: a 4xx that decides nothing, `no_leader`, a refused
//! connection) or `info` (outcome unknown: a timeout, a reset, a 5xx after the request may have
//! reached a leader).
//!
//! Events are kept in memory by a [`Recorder`] shared by all clients and written as JSONL at the
//! end. Checkers work on [`Operation`]s: an invocation paired with its completion.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::HarnessError;
use crate::NodeId;

/// Which workload an operation belongs to: checkers choose their accounts by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Bank,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Request {
    Debit {
        key: String,
        amount: u64,
    },
    Grant {
        grant_id: String,
        amount: u64,
    },
    /// `GET /v1/accounts/{id}`, linearizable.
    Read,
    Reserve {
        reservation_id: String,
        amount: u64,
        ttl_ms: u64,
    },
    CommitReservation {
        reservation_id: String,
        amount: u64,
    },
    ReleaseReservation {
        reservation_id: String,
    },
}

impl Request {
    /// The client key that makes the request idempotent: the same key on a retry means the
    /// same request. Reads have none.
    pub fn client_key(&self) -> Option<ClientKey> {
        match self {
            Request::Debit { key, .. } => Some(ClientKey::Debit(key.clone())),
            Request::Grant { grant_id, .. } => Some(ClientKey::Grant(grant_id.clone())),
            Request::Read => None,
            Request::Reserve { reservation_id, .. } => {
                Some(ClientKey::Reserve(reservation_id.clone()))
            }
            Request::CommitReservation { reservation_id, .. } => {
                Some(ClientKey::Commit(reservation_id.clone()))
            }
            Request::ReleaseReservation { reservation_id } => {
                Some(ClientKey::Release(reservation_id.clone()))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Debit { .. } => "debit",
            Request::Grant { .. } => "grant",
            Request::Read => "read",
            Request::Reserve { .. } => "reserve",
            Request::CommitReservation { .. } => "commit",
            Request::ReleaseReservation { .. } => "release",
        }
    }
}

/// The key under which the ledger decides a request once (per account).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientKey {
    Debit(String),
    Grant(String),
    Reserve(String),
    Commit(String),
    Release(String),
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Debit(key) => write!(formatter, "debit key {key}"),
            ClientKey::Grant(id) => write!(formatter, "grant {id}"),
            ClientKey::Reserve(id) => write!(formatter, "reservation {id}"),
            ClientKey::Commit(id) => write!(formatter, "commit of reservation {id}"),
            ClientKey::Release(id) => write!(formatter, "release of reservation {id}"),
        }
    }
}

/// What the ledger answered, for completions of type `ok`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// A decided debit: accepted (with the credits drawn and the balance right after) or
    /// rejected (with its code, e.g. `insufficient_credits`).
    Debit {
        accepted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        replayed: bool,
    },
    Grant {
        replayed: bool,
    },
    Read(AccountSnapshot),
    /// A decided reservation call (reserve, commit or release): accepted or rejected with code.
    Reservation {
        accepted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed: Option<bool>,
        /// The reservation's status in an accepted answer (`active`, `committed`, `released`,
        /// or `expired`: a release that came after the time to live is answered with the
        /// expiry that released it). Absent in histories recorded before it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
}

/// An account as one linearizable read showed it. `granted` is the sum of the listed grants'
/// amounts; `expired` and `voided` are zero until the ledger reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub available: i64,
    pub reserved: u64,
    pub consumed: u64,
    pub granted: u64,
    #[serde(default)]
    pub expired: u64,
    #[serde(default)]
    pub voided: u64,
    pub overdraft_limit: u64,
    /// Grant id → amount, as listed. Kept only in the final state: a read in the history keeps
    /// the totals above and an empty list (see [`AccountSnapshot::without_grant_list`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, u64>,
}

impl AccountSnapshot {
    /// Reads the fields the harness relies on from a `GET /v1/accounts/{id}` body. Parsed from
    /// JSON values rather than through `ledger-api`'s struct so that fields the ledger adds
    /// later (`expired`, `voided`) are used as soon as they appear.
    pub fn from_json(body: &serde_json::Value) -> Result<AccountSnapshot, String> {
        let integer = |name: &str| -> Result<i64, String> {
            body.get(name)
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| format!("no integer {name:?} in {body}"))
        };
        let unsigned = |name: &str| -> Result<u64, String> {
            body.get(name)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("no unsigned {name:?} in {body}"))
        };
        let optional = |name: &str| {
            body.get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let mut grants = BTreeMap::new();
        for grant in body
            .get("grants")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| format!("no grants list in {body}"))?
        {
            let id = grant
                .get("grant_id")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("a grant without grant_id in {body}"))?;
            let amount = grant
                .get("amount")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("a grant without amount in {body}"))?;
            grants.insert(id.to_owned(), amount);
        }
        Ok(AccountSnapshot {
            available: integer("available")?,
            reserved: unsigned("reserved")?,
            consumed: unsigned("consumed")?,
            granted: grants.values().sum(),
            expired: optional("expired"),
            voided: optional("voided"),
            overdraft_limit: unsigned("overdraft_limit")?,
            grants,
        })
    }

    /// The snapshot with its grant list dropped and every total kept, as a read is recorded in
    /// the history. The list grows with every grant on the account, so keeping it in every
    /// read made a run's memory grow with the square of its length: a 25-minute run ran the
    /// harness out of 24 GB. No checker reads the list of a read in the history; the final
    /// state keeps it.
    pub fn without_grant_list(mut self) -> AccountSnapshot {
        self.grants = BTreeMap::new();
        self
    }

    /// available + reserved + consumed + expired + voided, which must equal `granted`.
    pub fn accounted(&self) -> i128 {
        i128::from(self.available)
            + i128::from(self.reserved)
            + i128::from(self.consumed)
            + i128::from(self.expired)
            + i128::from(self.voided)
    }
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history; invocations and completions share one sequence.
    pub index: u64,
    /// Pairs an invocation with its completion.
    pub op_id: u64,
    /// The client (logical thread) that issued it; one operation at a time per process.
    pub process: u32,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Microseconds since the start of the run (monotonic clock of the harness).
    pub time_us: u64,
    /// Wall clock of the harness, Unix milliseconds, to line up with node logs.
    pub wall_ms: u64,
    pub workload: Workload,
    pub account: String,
    /// The node the request was sent to.
    pub node: NodeId,
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok(Answer),
    /// Certainly not applied.
    Fail(String),
    /// May or may not have applied, now or later.
    Info(String),
}

/// An invocation with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub op_id: u64,
    pub process: u32,
    pub workload: Workload,
    pub account: String,
    pub node: NodeId,
    pub request: Request,
    pub invoke_index: u64,
    pub invoke_us: u64,
    /// `None` for an operation still pending when the history ended (an `info`).
    pub complete_index: Option<u64>,
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
}

impl Operation {
    pub fn latency_us(&self) -> Option<u64> {
        self.complete_us
            .map(|complete| complete.saturating_sub(self.invoke_us))
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    /// A short human description: `p3 n2 debit a-1 key=k7 amount=5 → ok accepted available=90`.
    pub fn describe(&self) -> String {
        let request = match &self.request {
            Request::Debit { key, amount } => format!("debit key={key} amount={amount}"),
            Request::Grant { grant_id, amount } => format!("grant id={grant_id} amount={amount}"),
            Request::Read => "read".to_owned(),
            Request::Reserve {
                reservation_id,
                amount,
                ttl_ms,
            } => format!("reserve id={reservation_id} amount={amount} ttl_ms={ttl_ms}"),
            Request::CommitReservation {
                reservation_id,
                amount,
            } => format!("commit id={reservation_id} amount={amount}"),
            Request::ReleaseReservation { reservation_id } => {
                format!("release id={reservation_id}")
            }
        };
        let outcome = match &self.outcome {
            Outcome::Ok(answer) => format!("ok {}", describe_answer(answer)),
            Outcome::Fail(error) => format!("fail ({error})"),
            Outcome::Info(error) => format!("info ({error})"),
        };
        let end = match self.complete_us {
            Some(complete) => format!("{:.3}s", complete as f64 / 1e6),
            None => "∞".to_owned(),
        };
        format!(
            "[{:.3}s..{end}] p{} node{} {} {request} → {outcome}",
            self.invoke_us as f64 / 1e6,
            self.process,
            self.node,
            self.account
        )
    }
}

pub fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::Debit {
            accepted: true,
            amount,
            available,
            replayed,
            ..
        } => format!(
            "accepted amount={} available={} replayed={replayed}",
            amount.map_or("?".to_owned(), |value| value.to_string()),
            available.map_or("?".to_owned(), |value| value.to_string())
        ),
        Answer::Debit {
            accepted: false,
            code,
            replayed,
            ..
        } => format!(
            "rejected {} replayed={replayed}",
            code.as_deref().unwrap_or("?")
        ),
        Answer::Grant { replayed } => format!("granted replayed={replayed}"),
        Answer::Read(snapshot) => format!(
            "available={} reserved={} consumed={} granted={}",
            snapshot.available, snapshot.reserved, snapshot.consumed, snapshot.granted
        ),
        Answer::Reservation {
            accepted,
            code,
            status,
            ..
        } => {
            if *accepted {
                match status {
                    Some(status) => format!("accepted ({status})"),
                    None => "accepted".to_owned(),
                }
            } else {
                format!("rejected {}", code.as_deref().unwrap_or("?"))
            }
        }
    }
}

/// Pairs invocations with completions. A completion without its invocation is ignored (it
/// cannot come from the [`Recorder`]); an invocation without a completion becomes `info`.
pub fn operations(events: &[Event]) -> Vec<Operation> {
    let mut pending: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut done = Vec::new();
    for event in events {
        if event.event_type == EventType::Invoke {
            pending.insert(event.op_id, event);
            continue;
        }
        let Some(invoke) = pending.remove(&event.op_id) else {
            continue;
        };
        let outcome = match event.event_type {
            EventType::Ok => match &event.answer {
                Some(answer) => Outcome::Ok(answer.clone()),
                None => Outcome::Info("ok without an answer".to_owned()),
            },
            EventType::Fail => Outcome::Fail(event.error.clone().unwrap_or_default()),
            EventType::Info | EventType::Invoke => {
                Outcome::Info(event.error.clone().unwrap_or_default())
            }
        };
        done.push(operation_of(invoke, Some(event), outcome));
    }
    for invoke in pending.into_values() {
        done.push(operation_of(
            invoke,
            None,
            Outcome::Info("no completion before the history ended".to_owned()),
        ));
    }
    done.sort_by_key(|operation| operation.invoke_index);
    done
}

fn operation_of(invoke: &Event, completion: Option<&Event>, outcome: Outcome) -> Operation {
    Operation {
        op_id: invoke.op_id,
        process: invoke.process,
        workload: invoke.workload,
        account: invoke.account.clone(),
        node: invoke.node,
        request: invoke.request.clone(),
        invoke_index: invoke.index,
        invoke_us: invoke.time_us,
        complete_index: completion.map(|event| event.index),
        complete_us: completion.map(|event| event.time_us),
        outcome,
    }
}

/// The invocation's identity, returned by [`Recorder::invoke`] and given back on completion.
#[derive(Clone, Debug)]
pub struct Invocation {
    op_id: u64,
    process: u32,
    workload: Workload,
    account: String,
    node: NodeId,
    request: Request,
}

/// Appends events from many clients; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
    start: Instant,
}

struct RecorderInner {
    events: Vec<Event>,
    next_op_id: u64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(RecorderInner {
                events: Vec::new(),
                next_op_id: 0,
            })),
            start,
        }
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn invoke(
        &self,
        process: u32,
        workload: Workload,
        account: &str,
        node: NodeId,
        request: Request,
    ) -> Invocation {
        let mut inner = lock(&self.inner);
        let op_id = inner.next_op_id;
        inner.next_op_id += 1;
        let invocation = Invocation {
            op_id,
            process,
            workload,
            account: account.to_owned(),
            node,
            request,
        };
        self.push(&mut inner, &invocation, EventType::Invoke, None, None);
        invocation
    }

    pub fn complete(&self, invocation: &Invocation, outcome: Outcome) {
        let mut inner = lock(&self.inner);
        let (event_type, answer, error) = match outcome {
            Outcome::Ok(answer) => (EventType::Ok, Some(answer), None),
            Outcome::Fail(error) => (EventType::Fail, None, Some(error)),
            Outcome::Info(error) => (EventType::Info, None, Some(error)),
        };
        self.push(&mut inner, invocation, event_type, answer, error);
    }

    fn push(
        &self,
        inner: &mut RecorderInner,
        invocation: &Invocation,
        event_type: EventType,
        answer: Option<Answer>,
        error: Option<String>,
    ) {
        // Taken under the lock, so that time stamps never decrease along the index.
        let time_us = self.now_us();
        let index = inner.events.len() as u64;
        inner.events.push(Event {
            index,
            op_id: invocation.op_id,
            process: invocation.process,
            event_type,
            time_us,
            wall_ms: wall_clock_ms(),
            workload: invocation.workload,
            account: invocation.account.clone(),
            node: invocation.node,
            request: invocation.request.clone(),
            answer,
            error,
        });
    }

    /// Hands the recorded events over, leaving the recorder empty: the history of a long run
    /// is gigabytes, too much to copy.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut lock(&self.inner).events)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking client thread cannot leave the event list half-written (push is one
    // Vec::push), so a poisoned lock still guards consistent data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes the events as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<(), HarnessError> {
    let file = std::fs::File::create(path).map_err(HarnessError::io("creating", path))?;
    let mut writer = std::io::BufWriter::new(file);
    for item in items {
        let line = serde_json::to_string(item).map_err(|error| HarnessError::Io {
            action: "encoding a line of",
            path: path.to_owned(),
            source: std::io::Error::other(error),
        })?;
        writeln!(writer, "{line}").map_err(HarnessError::io("writing", path))?;
    }
    writer.flush().map_err(HarnessError::io("writing", path))
}

/// Reads a `history.jsonl` back (for re-checking a run offline).
pub fn read_history(path: &Path) -> Result<Vec<Event>, HarnessError> {
    let text = std::fs::read_to_string(path).map_err(HarnessError::io("reading", path))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|error| HarnessError::Io {
                action: "parsing a line of",
                path: path.to_owned(),
                source: std::io::Error::other(error),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_invocations_with_completions_and_pending_ones_become_info() {
        let recorder = Recorder::new(Instant::now());
        let first = recorder.invoke(1, Workload::Bank, "a", 1, Request::Read);
        let second = recorder.invoke(
            2,
            Workload::Bank,
            "a",
            2,
            Request::Debit {
                key: "k".into(),
                amount: 3,
            },
        );
        recorder.complete(&first, Outcome::Fail("no_leader".into()));
        let operations = operations(&recorder.take_events());
        assert_eq!(operations.len(), 2);
        assert_eq!(operations[0].outcome, Outcome::Fail("no_leader".into()));
        assert!(matches!(operations[1].outcome, Outcome::Info(_)));
        assert_eq!(operations[1].complete_us, None);
        assert_eq!(second.op_id, operations[1].op_id);
    }

    #[test]
    fn an_event_round_trips_through_json() {
        let recorder = Recorder::new(Instant::now());
        let invocation = recorder.invoke(
            3,
            Workload::Linear,
            "acc",
            2,
            Request::Grant {
                grant_id: "g".into(),
                amount: 10,
            },
        );
        recorder.complete(&invocation, Outcome::Ok(Answer::Grant { replayed: false }));
        for event in recorder.take_events() {
            let line = serde_json::to_string(&event).expect("events encode");
            let back: Event = serde_json::from_str(&line).expect("events decode");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn snapshot_reads_optional_fields_when_present() {
        let body = serde_json::json!({
            "account_id": "a", "available": -5, "reserved": 2, "consumed": 10,
            "overdraft_limit": 10, "expired": 3,
            "grants": [{"grant_id": "g1", "amount": 7}, {"grant_id": "g2", "amount": 3}]
        });
        let snapshot = AccountSnapshot::from_json(&body).expect("a valid body");
        assert_eq!(snapshot.granted, 10);
        assert_eq!(snapshot.expired, 3);
        assert_eq!(snapshot.voided, 0);
        assert_eq!(snapshot.accounted(), 10);
    }

    #[test]
    fn a_read_in_the_history_keeps_the_totals_but_not_the_grant_list() {
        let body = serde_json::json!({
            "account_id": "a", "available": 4, "reserved": 1, "consumed": 5,
            "overdraft_limit": 0,
            "grants": [{"grant_id": "g1", "amount": 7}, {"grant_id": "g2", "amount": 3}]
        });
        let full = AccountSnapshot::from_json(&body).expect("a valid body");
        let recorded = full.clone().without_grant_list();
        assert!(recorded.grants.is_empty());
        assert_eq!(
            (recorded.available, recorded.reserved, recorded.consumed),
            (full.available, full.reserved, full.consumed)
        );
        assert_eq!(recorded.granted, 10);
        assert_eq!(recorded.accounted(), full.accounted());
        let line = serde_json::to_string(&Answer::Read(recorded.clone())).expect("encodes");
        assert!(!line.contains("grants"), "{line}");
        let back: Answer = serde_json::from_str(&line).expect("decodes");
        assert_eq!(back, Answer::Read(recorded));
    }
}

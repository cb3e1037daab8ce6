//! Redis as a credit ledger: one Lua script per debit (idempotency check, check-and-decrement,
//! key store), which Redis runs atomically. Run it with `appendonly yes` and
//! `appendfsync always` to compare like with like (every acknowledged write is fsynced: Redis
//! fsyncs the append-only file once per event-loop iteration, before it replies, so the writes
//! of one iteration share an fsync), and with `appendfsync everysec` for reference (up to a
//! second of acknowledged debits lost in a crash).
//!
//! Keys: `acct:{id}:available` and `acct:{id}:reserved` (integers), `debit:{id}:{key}` (the
//! decided outcome of a key), `resv:{id}:{rid}` (a reservation: amount and state). A batch is
//! one pipeline of script calls: one round trip, one or a few fsyncs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script};

use super::{
    all_failed, DebitItem, Driver, DriverError, ItemOutcome, OperationResult, ReservationItem,
};
use crate::workload::{account_id, OperationKind};

const SYSTEM: &str = "redis";

/// KEYS: available, debit record. ARGV: amount. Returns {outcome, replayed}. A decided key
/// answers its decision again (exactly once); a rejection is recorded like an acceptance.
const DEBIT_SCRIPT: &str = r#"
local decided = redis.call('GET', KEYS[2])
if decided then return {decided, 1} end
local available = redis.call('GET', KEYS[1])
if not available then return {'account_not_found', 0} end
local amount = tonumber(ARGV[1])
local outcome = 'insufficient_credits'
if tonumber(available) >= amount then
  redis.call('DECRBY', KEYS[1], amount)
  outcome = 'accepted'
end
redis.call('SET', KEYS[2], outcome)
return {outcome, 0}
"#;

/// KEYS: available, reserved, reservation. ARGV: amount, ttl_ms. Returns {outcome, replayed}.
/// The hold expires in Redis itself (`PEXPIRE`) but, as in the PostgreSQL driver, expiry does
/// not give the credits back: the benchmark commits every hold right away.
const RESERVE_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[3], 'state')
if state then return {state, 1} end
local available = redis.call('GET', KEYS[1])
if not available then return {'account_not_found', 0} end
local amount = tonumber(ARGV[1])
local outcome = 'insufficient_credits'
if tonumber(available) >= amount then
  redis.call('DECRBY', KEYS[1], amount)
  redis.call('INCRBY', KEYS[2], amount)
  outcome = 'held'
end
redis.call('HSET', KEYS[3], 'state', outcome, 'amount', amount)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]))
return {outcome, 0}
"#;

/// KEYS: available, reserved, reservation. ARGV: amount drawn. Draws it and releases the rest.
const COMMIT_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[3], 'state')
if state == 'committed' then return {'committed', 1} end
if state ~= 'held' then return {'reservation_not_held', 0} end
local held = tonumber(redis.call('HGET', KEYS[3], 'amount'))
local drawn = tonumber(ARGV[1])
if drawn > held then return {'amount_above_reservation', 0} end
redis.call('DECRBY', KEYS[2], held)
redis.call('INCRBY', KEYS[1], held - drawn)
redis.call('HSET', KEYS[3], 'state', 'committed', 'drawn', drawn)
return {'committed', 0}
"#;

/// Setup writes balances in pipelines of this many commands.
const SETUP_PIPELINE_LENGTH: u64 = 5_000;

fn available_key(account: &str) -> String {
    format!("acct:{account}:available")
}

fn reserved_key(account: &str) -> String {
    format!("acct:{account}:reserved")
}

fn debit_key(account: &str, idempotency_key: &str) -> String {
    format!("debit:{account}:{idempotency_key}")
}

fn reservation_key(account: &str, reservation_id: &str) -> String {
    format!("resv:{account}:{reservation_id}")
}

/// The name of a Redis failure in `errors_by_kind`.
fn error_kind(error: &RedisError) -> String {
    if error.is_timeout() {
        return "redis_timeout".to_owned();
    }
    if error.is_connection_dropped() || error.is_connection_refusal() || error.is_io_error() {
        return "redis_connection".to_owned();
    }
    match error.code() {
        Some(code) => format!("redis_{}", code.to_lowercase()),
        None => format!("redis_{:?}", error.kind()).to_lowercase(),
    }
}

/// A script's answer turned into an outcome: `accepted_as` is the answer that means success.
fn script_outcome(answer: &str, accepted_as: &str) -> ItemOutcome {
    if answer == accepted_as {
        ItemOutcome::Accepted
    } else {
        ItemOutcome::rejected(answer)
    }
}

/// The Redis driver: a few multiplexed connections (each pipelines the requests of many
/// workers), used in turn.
pub struct RedisDriver {
    connections: Vec<MultiplexedConnection>,
    next_connection: AtomicUsize,
    debit_script: Script,
    reserve_script: Script,
    commit_script: Script,
}

impl RedisDriver {
    /// Opens `connections` multiplexed connections to `url` (e.g. `redis://127.0.0.1:6379`) and
    /// loads the scripts.
    pub async fn connect(url: &str, connections: usize) -> Result<Arc<RedisDriver>, DriverError> {
        let connect_error = |reason: String| DriverError::Connect {
            system: SYSTEM,
            address: url.to_owned(),
            reason,
        };
        let client = redis::Client::open(url).map_err(|error| connect_error(error.to_string()))?;
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            opened.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|error| connect_error(error.to_string()))?,
            );
        }
        let driver = RedisDriver {
            connections: opened,
            next_connection: AtomicUsize::new(0),
            debit_script: Script::new(DEBIT_SCRIPT),
            reserve_script: Script::new(RESERVE_SCRIPT),
            commit_script: Script::new(COMMIT_SCRIPT),
        };
        // Loaded up front, so that pipelines can call the scripts by hash (EVALSHA).
        let mut connection = driver.connection();
        for script in [
            &driver.debit_script,
            &driver.reserve_script,
            &driver.commit_script,
        ] {
            script
                .prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(|error| connect_error(format!("loading a script: {error}")))?;
        }
        Ok(Arc::new(driver))
    }

    fn connection(&self) -> MultiplexedConnection {
        let index = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.connections[index % self.connections.len()].clone()
    }
}

impl Driver for RedisDriver {
    fn describe(&self) -> String {
        format!(
            "redis: {} multiplexed connections, Lua debit script",
            self.connections.len()
        )
    }

    async fn setup(
        &self,
        accounts: u64,
        credits_per_account: u64,
        _concurrency: usize,
    ) -> Result<(), DriverError> {
        let mut connection = self.connection();
        let mut start = 0;
        while start < accounts {
            let end = (start + SETUP_PIPELINE_LENGTH).min(accounts);
            let mut pipeline = redis::pipe();
            for index in start..end {
                let account = account_id(index);
                // NX: an existing balance is left alone, so setup can run again.
                pipeline
                    .cmd("SET")
                    .arg(available_key(&account))
                    .arg(credits_per_account)
                    .arg("NX")
                    .ignore();
                pipeline
                    .cmd("SET")
                    .arg(reserved_key(&account))
                    .arg(0)
                    .arg("NX")
                    .ignore();
            }
            pipeline
                .query_async::<()>(&mut connection)
                .await
                .map_err(|error| DriverError::Setup {
                    system: SYSTEM,
                    account_id: account_id(start),
                    reason: error.to_string(),
                })?;
            start = end;
        }
        Ok(())
    }

    async fn debit(&self, item: DebitItem) -> OperationResult {
        let mut connection = self.connection();
        let answer: Result<(String, i64), RedisError> = self
            .debit_script
            .key(available_key(&item.account_id))
            .key(debit_key(&item.account_id, &item.idempotency_key))
            .arg(item.amount)
            .invoke_async(&mut connection)
            .await;
        let outcome = match answer {
            Ok((answer, _replayed)) => script_outcome(&answer, "accepted"),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        OperationResult {
            kind: OperationKind::Debit,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn debit_batch(&self, items: Vec<DebitItem>) -> OperationResult {
        let mut connection = self.connection();
        let mut pipeline = redis::pipe();
        for item in &items {
            pipeline
                .cmd("EVALSHA")
                .arg(self.debit_script.get_hash())
                .arg(2)
                .arg(available_key(&item.account_id))
                .arg(debit_key(&item.account_id, &item.idempotency_key))
                .arg(item.amount);
        }
        match pipeline
            .query_async::<Vec<(String, i64)>>(&mut connection)
            .await
        {
            Ok(answers) if answers.len() == items.len() => OperationResult {
                kind: OperationKind::Debit,
                outcomes: answers
                    .iter()
                    .map(|(answer, _)| script_outcome(answer, "accepted"))
                    .collect(),
                requests: 1,
            },
            Ok(_) => all_failed(OperationKind::Debit, items.len(), "redis_answer_count"),
            Err(error) => all_failed(OperationKind::Debit, items.len(), &error_kind(&error)),
        }
    }

    async fn read(&self, account_id: String) -> OperationResult {
        let mut connection = self.connection();
        let answer: Result<(Option<i64>, Option<i64>), RedisError> = redis::cmd("MGET")
            .arg(available_key(&account_id))
            .arg(reserved_key(&account_id))
            .query_async(&mut connection)
            .await;
        let outcome = match answer {
            Ok((Some(_), _)) => ItemOutcome::Accepted,
            Ok((None, _)) => ItemOutcome::rejected("account_not_found"),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        OperationResult {
            kind: OperationKind::Read,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn reserve_and_commit(&self, reservation: ReservationItem) -> OperationResult {
        let mut connection = self.connection();
        let account = &reservation.account_id;
        let result = |outcome: ItemOutcome, requests: u32| OperationResult {
            kind: OperationKind::Reserve,
            outcomes: vec![outcome],
            requests,
        };
        let held: Result<(String, i64), RedisError> = self
            .reserve_script
            .key(available_key(account))
            .key(reserved_key(account))
            .key(reservation_key(account, &reservation.reservation_id))
            .arg(reservation.amount)
            .arg(reservation.ttl_ms.max(1))
            .invoke_async(&mut connection)
            .await;
        match held {
            Ok((answer, _)) if answer == "held" => {}
            Ok((answer, _)) => return result(ItemOutcome::rejected(answer), 1),
            Err(error) => return result(ItemOutcome::failed(error_kind(&error)), 1),
        }
        let committed: Result<(String, i64), RedisError> = self
            .commit_script
            .key(available_key(account))
            .key(reserved_key(account))
            .key(reservation_key(account, &reservation.reservation_id))
            .arg(reservation.commit_amount)
            .invoke_async(&mut connection)
            .await;
        let outcome = match committed {
            Ok((answer, _)) if answer == "committed" => ItemOutcome::Accepted,
            Ok((answer, _)) => ItemOutcome::failed(answer),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        result(outcome, 2)
    }
}

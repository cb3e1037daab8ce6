//! PostgreSQL as a credit ledger, the way a careful team would build it: a debit is one
//! transaction made of a conditional `UPDATE` of the balance (`available >= amount`) and an
//! `INSERT` of the idempotency key with the outcome, with `synchronous_commit = on` and fsync on
//! (set by `benches/peers/run.sh`), so that an answered debit is on disk.
//!
//! Choices, to give PostgreSQL its best honest shot:
//! - **One round trip per debit.** The update and the insert are one statement (a data-modifying
//!   `WITH`), prepared once per connection and run as an implicit transaction. A replayed key
//!   violates the primary key of `debits`, which rolls the whole statement back (the balance
//!   too); the driver then reads the recorded outcome, so every key is decided exactly once.
//! - **A batch is one transaction**: `BEGIN`, the debit statement once per item (pipelined on
//!   the connection, so one round trip in all), `COMMIT`: one WAL flush for the whole batch,
//!   like the ledger's one Raft entry. Items are sent in account order, so that two batches
//!   lock shared rows in the same order and cannot deadlock. The price: a failed item (such as
//!   a replayed key) aborts the batch, and every item of it is reported failed; the benchmark
//!   never replays keys, so this does not happen in its runs.
//! - A pool of connections, one per concurrent operation (up to `connections`).
//!
//! Reservations hold credits in `accounts.reserved` and record the hold in `reservations`; the
//! TTL is stored but not enforced (nothing expires holds: the benchmark commits every hold
//! right away).

use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::{
    all_failed, DebitItem, Driver, DriverError, ItemOutcome, OperationResult, ReservationItem,
};
use crate::workload::{OperationKind, ACCOUNT_ID_PREFIX};

const SYSTEM: &str = "postgres";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id text PRIMARY KEY,
    available bigint NOT NULL,
    reserved bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS debits (
    account_id text NOT NULL,
    idempotency_key text NOT NULL,
    amount bigint NOT NULL,
    accepted boolean NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS reservations (
    account_id text NOT NULL,
    reservation_id text NOT NULL,
    amount bigint NOT NULL,
    drawn bigint,
    state text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, reservation_id)
);
";

/// $1 account, $2 key, $3 amount → `accepted` (no row: unknown account).
const DEBIT_SQL: &str = "
WITH debit AS (
    UPDATE accounts SET available = available - $3
    WHERE id = $1 AND available >= $3
    RETURNING available
)
INSERT INTO debits (account_id, idempotency_key, amount, accepted)
SELECT $1, $2, $3, EXISTS (SELECT 1 FROM debit)
WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)
RETURNING accepted
";

const RECORDED_DEBIT_SQL: &str =
    "SELECT accepted FROM debits WHERE account_id = $1 AND idempotency_key = $2";

const READ_SQL: &str = "SELECT available, reserved FROM accounts WHERE id = $1";

/// $1 account, $2 reservation, $3 amount, $4 ttl seconds → `state` (`held` or
/// `insufficient_credits`; no row: unknown account).
const RESERVE_SQL: &str = "
WITH hold AS (
    UPDATE accounts SET available = available - $3, reserved = reserved + $3
    WHERE id = $1 AND available >= $3
    RETURNING 1
)
INSERT INTO reservations (account_id, reservation_id, amount, state, expires_at)
SELECT $1, $2, $3,
       CASE WHEN EXISTS (SELECT 1 FROM hold) THEN 'held' ELSE 'insufficient_credits' END,
       now() + make_interval(secs => $4)
WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)
RETURNING state
";

/// $1 account, $2 reservation, $3 amount drawn → a row when committed.
const COMMIT_SQL: &str = "
WITH done AS (
    UPDATE reservations SET state = 'committed', drawn = $3
    WHERE account_id = $1 AND reservation_id = $2 AND state = 'held' AND amount >= $3
    RETURNING amount
)
UPDATE accounts
SET reserved = accounts.reserved - done.amount,
    available = accounts.available + (done.amount - $3)
FROM done
WHERE accounts.id = $1
RETURNING 1
";

/// `$1` balance of every account, `$2` accounts; ids built like `workload::account_id`.
fn setup_sql() -> String {
    format!(
        "INSERT INTO accounts (id, available)
         SELECT '{ACCOUNT_ID_PREFIX}' || n, $1::bigint
         FROM generate_series(0::bigint, $2::bigint - 1) AS n
         ON CONFLICT (id) DO NOTHING"
    )
}

/// One connection with its prepared statements.
struct Connection {
    client: Client,
    debit: Statement,
    recorded_debit: Statement,
    read: Statement,
    reserve: Statement,
    commit: Statement,
}

impl Connection {
    async fn open(config: &str) -> Result<Connection, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(config, NoTls).await?;
        // The connection object does the I/O; it ends when the client is dropped. Its error, if
        // any, also fails the client's pending queries, which are counted there.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            debit: client.prepare(DEBIT_SQL).await?,
            recorded_debit: client.prepare(RECORDED_DEBIT_SQL).await?,
            read: client.prepare(READ_SQL).await?,
            reserve: client.prepare(RESERVE_SQL).await?,
            commit: client.prepare(COMMIT_SQL).await?,
            client,
        })
    }
}

/// A fixed pool: a connection is used by one operation at a time (a transaction needs it
/// alone).
struct Pool {
    idle: Mutex<Vec<Connection>>,
    available: Semaphore,
}

/// A connection taken from the pool; it goes back when dropped.
struct PooledConnection<'a> {
    connection: Option<Connection>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for PooledConnection<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for PooledConnection<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            lock(&self.pool.idle).push(connection);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The list of idle connections stays valid even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    async fn get(&self) -> Option<PooledConnection<'_>> {
        // The semaphore is never closed, so `acquire` only fails if it were.
        let permit = self.available.acquire().await.ok()?;
        let connection = lock(&self.idle).pop()?;
        Some(PooledConnection {
            connection: Some(connection),
            pool: self,
            _permit: permit,
        })
    }
}

/// The name of a PostgreSQL failure in `errors_by_kind`: `postgres_{SQLSTATE}` (e.g.
/// `postgres_40P01` for a deadlock), or `postgres_connection`.
fn error_kind(error: &tokio_postgres::Error) -> String {
    match error.code() {
        Some(code) => format!("postgres_{}", code.code()),
        None if error.is_closed() => "postgres_connection_closed".to_owned(),
        None => "postgres_connection".to_owned(),
    }
}

/// The error with its causes: tokio-postgres keeps the useful part (the server's message, the
/// type that failed to serialize) in the source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn amount_parameter(amount: u64) -> i64 {
    // Amounts of the load generator are small; a larger one saturates rather than wraps.
    i64::try_from(amount).unwrap_or(i64::MAX)
}

/// The PostgreSQL driver.
pub struct PostgresDriver {
    pool: Pool,
    connections: usize,
}

impl PostgresDriver {
    /// Connects `connections` times with `config` (e.g. `host=127.0.0.1 port=5432 user=bench
    /// dbname=bench`), creating the tables first if they are missing.
    pub async fn connect(
        config: &str,
        connections: usize,
    ) -> Result<Arc<PostgresDriver>, DriverError> {
        let connect_error = |error: tokio_postgres::Error| DriverError::Connect {
            system: SYSTEM,
            address: config.to_owned(),
            reason: error_chain(&error),
        };
        // The schema comes first, from one connection: statements are prepared against it.
        {
            let (client, connection) = tokio_postgres::connect(config, NoTls)
                .await
                .map_err(connect_error)?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            client.batch_execute(SCHEMA).await.map_err(connect_error)?;
            drop(client);
            let _ = driver.await;
        }
        let connections = connections.max(1);
        let mut opened = Vec::with_capacity(connections);
        for _ in 0..connections {
            opened.push(Connection::open(config).await.map_err(connect_error)?);
        }
        Ok(Arc::new(PostgresDriver {
            pool: Pool {
                idle: Mutex::new(opened),
                available: Semaphore::new(connections),
            },
            connections,
        }))
    }

    async fn debit_on(connection: &Connection, item: &DebitItem) -> ItemOutcome {
        let amount = amount_parameter(item.amount);
        let answer = connection
            .client
            .query_opt(
                &connection.debit,
                &[&item.account_id, &item.idempotency_key, &amount],
            )
            .await;
        match answer {
            Ok(Some(row)) => accepted_outcome(row.get::<_, bool>(0)),
            Ok(None) => ItemOutcome::rejected("account_not_found"),
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // A replay: the statement rolled back; answer the recorded decision.
                match connection
                    .client
                    .query_opt(
                        &connection.recorded_debit,
                        &[&item.account_id, &item.idempotency_key],
                    )
                    .await
                {
                    Ok(Some(row)) => accepted_outcome(row.get::<_, bool>(0)),
                    Ok(None) => ItemOutcome::failed("postgres_replay_not_found"),
                    Err(error) => ItemOutcome::failed(error_kind(&error)),
                }
            }
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        }
    }
}

fn accepted_outcome(accepted: bool) -> ItemOutcome {
    if accepted {
        ItemOutcome::Accepted
    } else {
        ItemOutcome::rejected("insufficient_credits")
    }
}

impl Driver for PostgresDriver {
    fn describe(&self) -> String {
        format!(
            "postgres: {} connections, one statement per debit, one transaction per batch",
            self.connections
        )
    }

    async fn setup(
        &self,
        accounts: u64,
        credits_per_account: u64,
        _concurrency: usize,
    ) -> Result<(), DriverError> {
        let setup_error = |error: tokio_postgres::Error| DriverError::Setup {
            system: SYSTEM,
            account_id: format!("{ACCOUNT_ID_PREFIX}*"),
            reason: error_chain(&error),
        };
        let Some(connection) = self.pool.get().await else {
            return Err(DriverError::Setup {
                system: SYSTEM,
                account_id: format!("{ACCOUNT_ID_PREFIX}*"),
                reason: "no connection in the pool".to_owned(),
            });
        };
        let credits = amount_parameter(credits_per_account);
        let accounts = i64::try_from(accounts).unwrap_or(i64::MAX);
        connection
            .client
            .execute(&setup_sql(), &[&credits, &accounts])
            .await
            .map_err(setup_error)?;
        connection
            .client
            .batch_execute("ANALYZE accounts")
            .await
            .map_err(setup_error)?;
        Ok(())
    }

    async fn debit(&self, item: DebitItem) -> OperationResult {
        let Some(connection) = self.pool.get().await else {
            return all_failed(OperationKind::Debit, 1, "postgres_pool");
        };
        let outcome = PostgresDriver::debit_on(&connection, &item).await;
        OperationResult {
            kind: OperationKind::Debit,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn debit_batch(&self, items: Vec<DebitItem>) -> OperationResult {
        let count = items.len();
        let Some(mut connection) = self.pool.get().await else {
            return all_failed(OperationKind::Debit, count, "postgres_pool");
        };
        let connection = &mut *connection;
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by(|left, right| items[*left].account_id.cmp(&items[*right].account_id));
        let statement = connection.debit.clone();
        let transaction = match connection.client.transaction().await {
            Ok(transaction) => transaction,
            Err(error) => return all_failed(OperationKind::Debit, count, &error_kind(&error)),
        };
        let amounts: Vec<i64> = items
            .iter()
            .map(|item| amount_parameter(item.amount))
            .collect();
        // Polled together, the statements are pipelined on the connection.
        let (transaction_ref, statement_ref) = (&transaction, &statement);
        let answers = futures::future::join_all(order.iter().map(|position| {
            let item = &items[*position];
            let amount = &amounts[*position];
            async move {
                transaction_ref
                    .query_opt(
                        statement_ref,
                        &[&item.account_id, &item.idempotency_key, amount],
                    )
                    .await
            }
        }))
        .await;
        let mut outcomes = vec![ItemOutcome::failed("missing_result"); count];
        let mut first_failure: Option<String> = None;
        for (position, answer) in order.iter().zip(answers) {
            outcomes[*position] = match answer {
                Ok(Some(row)) => accepted_outcome(row.get::<_, bool>(0)),
                Ok(None) => ItemOutcome::rejected("account_not_found"),
                Err(error) => {
                    let kind = error_kind(&error);
                    first_failure.get_or_insert(kind.clone());
                    ItemOutcome::failed(kind)
                }
            };
        }
        if let Some(failure) = first_failure {
            // The transaction is aborted: nothing of the batch applied.
            let _ = transaction.rollback().await;
            return all_failed(OperationKind::Debit, count, &failure);
        }
        if let Err(error) = transaction.commit().await {
            return all_failed(OperationKind::Debit, count, &error_kind(&error));
        }
        OperationResult {
            kind: OperationKind::Debit,
            outcomes,
            requests: 1,
        }
    }

    async fn read(&self, account_id: String) -> OperationResult {
        let Some(connection) = self.pool.get().await else {
            return all_failed(OperationKind::Read, 1, "postgres_pool");
        };
        let outcome = match connection
            .client
            .query_opt(&connection.read, &[&account_id])
            .await
        {
            Ok(Some(_)) => ItemOutcome::Accepted,
            Ok(None) => ItemOutcome::rejected("account_not_found"),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        OperationResult {
            kind: OperationKind::Read,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn reserve_and_commit(&self, reservation: ReservationItem) -> OperationResult {
        let result = |outcome: ItemOutcome, requests: u32| OperationResult {
            kind: OperationKind::Reserve,
            outcomes: vec![outcome],
            requests,
        };
        let Some(connection) = self.pool.get().await else {
            return result(ItemOutcome::failed("postgres_pool"), 0);
        };
        let amount = amount_parameter(reservation.amount);
        let ttl_seconds = reservation.ttl_ms as f64 / 1_000.0;
        let held = connection
            .client
            .query_opt(
                &connection.reserve,
                &[
                    &reservation.account_id,
                    &reservation.reservation_id,
                    &amount,
                    &ttl_seconds,
                ],
            )
            .await;
        match held {
            Ok(Some(row)) if row.get::<_, &str>(0) == "held" => {}
            Ok(Some(row)) => return result(ItemOutcome::rejected(row.get::<_, &str>(0)), 1),
            Ok(None) => return result(ItemOutcome::rejected("account_not_found"), 1),
            Err(error) => return result(ItemOutcome::failed(error_kind(&error)), 1),
        }
        let drawn = amount_parameter(reservation.commit_amount);
        let committed = connection
            .client
            .query_opt(
                &connection.commit,
                &[&reservation.account_id, &reservation.reservation_id, &drawn],
            )
            .await;
        let outcome = match committed {
            Ok(Some(_)) => ItemOutcome::Accepted,
            Ok(None) => ItemOutcome::failed("reservation_not_held"),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        result(outcome, 2)
    }
}

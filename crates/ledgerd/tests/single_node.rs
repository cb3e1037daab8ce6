//! One real `ledgerd` process: the public contract end to end (accounts, grants, debits,
//! idempotent replays, 402 rejections, input validation, 404s) and durability across a SIGTERM
//! and restart on the same data directory.

mod common;

use anyhow::{ensure, Context as _};
use common::TestCluster;
use ledger_api::{codes, CreateGrantRequest, STATUS_ACCEPTED, STATUS_REJECTED};
use ledger_client::{AccountCreated, LedgerClient};

const SHARDS: u32 = 4;

fn grant_request(grant_id: &str, amount: u64) -> CreateGrantRequest {
    CreateGrantRequest::new(grant_id, amount, "purchase")
}

/// Posts `body` raw and requires the status and error code.
async fn expect_error(
    client: &LedgerClient,
    node_url: &str,
    path: &str,
    body: &str,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    let answer = client.post_raw(node_url, path, body).await?;
    ensure!(
        answer.status == status && answer.error_code().as_deref() == Some(code),
        "POST {path} {body}: expected {status} {code}, got {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_ready("single_node", 1, SHARDS).await?;
    let node_url = cluster.node(1).url();
    let client = cluster.client()?;

    // Accounts: created once, then the same request is a replay, a different one a conflict.
    assert_eq!(
        client.create_account("alice", None).await?,
        AccountCreated { created: true }
    );
    assert_eq!(
        client.create_account("alice", None).await?,
        AccountCreated { created: false }
    );
    let conflict = client
        .create_account("alice", Some(50))
        .await
        .expect_err("same id, other overdraft limit");
    assert_eq!(conflict.status(), Some(409));
    assert_eq!(conflict.code(), Some(codes::ACCOUNT_CONFLICT));

    // Grants: a replay is reported as one and does not add credits twice.
    let grant = client.grant("alice", &grant_request("g-1", 100)).await?;
    assert!(!grant.replayed);
    let grant_again = client.grant("alice", &grant_request("g-1", 100)).await?;
    assert!(grant_again.replayed);
    let account = client.get_account("alice").await?;
    assert_eq!(account.available, 100);
    assert_eq!(account.grants.len(), 1);
    assert_eq!(account.grants[0].amount, 100);

    // Debits: a retry with the same key returns the same decision and applies once.
    let first = client.debit("alice", "k-1", 30).await?;
    assert_eq!(first.status, STATUS_ACCEPTED);
    assert_eq!(first.amount, Some(30));
    assert_eq!(first.available, Some(70));
    assert!(!first.replayed);
    let retry = client.debit("alice", "k-1", 30).await?;
    assert_eq!(retry.status, STATUS_ACCEPTED);
    assert_eq!(retry.amount, Some(30));
    assert_eq!(
        retry.available,
        Some(70),
        "the replay shows the original decision"
    );
    assert!(retry.replayed);
    let account = client.get_account("alice").await?;
    assert_eq!(account.available, 70, "the retry did not apply twice");
    assert_eq!(account.consumed, 30);

    // The same key with another amount is a conflict, and changes nothing.
    let conflict = client
        .debit("alice", "k-1", 31)
        .await
        .expect_err("same key, other amount");
    assert_eq!(conflict.code(), Some(codes::IDEMPOTENCY_CONFLICT));

    // Beyond the balance: 402 insufficient_credits, and its replay is 402 again.
    let debits_path = "/v1/accounts/alice/debits";
    let too_much = r#"{"idempotency_key": "k-2", "amount": 71}"#;
    let rejected = client.post_raw(&node_url, debits_path, too_much).await?;
    assert_eq!(rejected.status, 402, "{}", rejected.body);
    assert_eq!(
        rejected.error_code().as_deref(),
        Some(codes::INSUFFICIENT_CREDITS)
    );
    let replayed_rejection = client.debit("alice", "k-2", 71).await?;
    assert_eq!(replayed_rejection.status, STATUS_REJECTED);
    assert_eq!(
        replayed_rejection.code.as_deref(),
        Some(codes::INSUFFICIENT_CREDITS)
    );
    assert!(replayed_rejection.replayed);
    let rejected_again = client.post_raw(&node_url, debits_path, too_much).await?;
    assert_eq!(rejected_again.status, 402, "{}", rejected_again.body);

    // A decided key can be looked up, accepted or rejected; an unknown key is not found.
    let looked_up = client
        .get_debit("alice", "k-1")
        .await?
        .context("k-1 decided")?;
    assert_eq!(looked_up.status, STATUS_ACCEPTED);
    assert_eq!(looked_up.amount, Some(30));
    let looked_up = client
        .get_debit("alice", "k-2")
        .await?
        .context("k-2 decided")?;
    assert_eq!(looked_up.status, STATUS_REJECTED);
    assert_eq!(looked_up.code.as_deref(), Some(codes::INSUFFICIENT_CREDITS));
    assert_eq!(client.get_debit("alice", "k-never").await?, None);

    // Bad input: 400 with a code naming the problem, and nothing applied.
    let bad_debits = [
        (
            r#"{"idempotency_key": "bad-1", "amount": -5}"#,
            codes::INVALID_AMOUNT,
        ),
        (
            r#"{"idempotency_key": "bad-2", "amount": 0}"#,
            codes::INVALID_AMOUNT,
        ),
        (
            r#"{"idempotency_key": "bad-3", "amount": 2.5}"#,
            codes::INVALID_AMOUNT,
        ),
        (
            r#"{"idempotency_key": "bad-4", "amount": 1000000000000000001}"#,
            codes::AMOUNT_TOO_LARGE,
        ),
        (r#"{"amount": 5}"#, codes::MISSING_FIELD),
        (r#"{"idempotency_key": "bad-5"}"#, codes::MISSING_FIELD),
        (
            r#"{"idempotency_key": "bad 6", "amount": 5}"#,
            codes::INVALID_IDENTIFIER,
        ),
        (
            r#"{"idempotency_key": "bad-7", "amount": "#,
            codes::INVALID_JSON,
        ),
        ("not json at all", codes::INVALID_JSON),
    ];
    for (body, code) in bad_debits {
        expect_error(&client, &node_url, debits_path, body, 400, code).await?;
    }
    let grants_path = "/v1/accounts/alice/grants";
    expect_error(
        &client,
        &node_url,
        grants_path,
        r#"{"grant_id": "bad-g", "amount": -1}"#,
        400,
        codes::INVALID_AMOUNT,
    )
    .await?;
    expect_error(
        &client,
        &node_url,
        grants_path,
        r#"{"amount": 10}"#,
        400,
        codes::MISSING_FIELD,
    )
    .await?;
    expect_error(
        &client,
        &node_url,
        "/v1/accounts",
        r#"{"account_id": ""}"#,
        400,
        codes::INVALID_IDENTIFIER,
    )
    .await?;
    for key in ["bad-1", "bad-2", "bad-3", "bad-4", "bad-5"] {
        assert_eq!(client.get_debit("alice", key).await?, None, "{key}");
    }
    let after_bad_input = client.get_account("alice").await?;
    assert_eq!(after_bad_input.available, 70);
    assert_eq!(after_bad_input.grants.len(), 1);

    // Unknown account: 404 account_not_found, for reads and for debits.
    let unknown = client
        .get_account("ghost")
        .await
        .expect_err("no such account");
    assert_eq!(unknown.status(), Some(404));
    assert_eq!(unknown.code(), Some(codes::ACCOUNT_NOT_FOUND));
    expect_error(
        &client,
        &node_url,
        "/v1/accounts/ghost/debits",
        r#"{"idempotency_key": "k-1", "amount": 1}"#,
        404,
        codes::ACCOUNT_NOT_FOUND,
    )
    .await?;

    // SIGTERM, restart on the same data directory: everything is still there.
    let before_restart = client.get_account("alice").await?;
    let status = cluster.terminate(1).await?;
    assert!(
        status.success(),
        "ledgerd exited with {status} after SIGTERM"
    );
    cluster.spawn(1)?;
    cluster.wait_for_health().await?;
    cluster.wait_for_leaders().await?;

    assert_eq!(client.get_account("alice").await?, before_restart);
    let replay = client.debit("alice", "k-1", 30).await?;
    assert_eq!(
        (
            replay.status.as_str(),
            replay.amount,
            replay.available,
            replay.replayed
        ),
        (STATUS_ACCEPTED, Some(30), Some(70), true)
    );
    let replay = client.debit("alice", "k-2", 71).await?;
    assert_eq!(replay.status, STATUS_REJECTED);
    assert!(replay.replayed);
    assert!(
        client
            .grant("alice", &grant_request("g-1", 100))
            .await?
            .replayed
    );
    assert_eq!(
        client.create_account("alice", None).await?,
        AccountCreated { created: false }
    );

    // And the node still takes new work.
    let after = client.debit("alice", "k-3", 10).await?;
    assert_eq!(after.status, STATUS_ACCEPTED);
    assert_eq!(after.available, Some(60));
    assert_eq!(client.get_account("alice").await?.available, 60);
    cluster.pass();
    Ok(())
}

//! Backup and restore of a whole cluster with `ledgerctl`: three real `ledgerd` processes take
//! debits, `ledgerctl backup` checkpoints every node, more debits follow, then every node is
//! stopped and restarted on a copy of its backup. The cluster comes back exactly as it was at
//! the backup: the debits before it replay their decisions, the ones after it are unknown, and
//! the replicas agree. Also: `ledgerctl status` and `shards` on a live cluster, and the
//! endpoint's refusals (an existing name, a name that is not an identifier).

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context as _};
use common::{accounts_covering_shards, TestCluster};
use ledger_api::{codes, CreateGrantRequest, STATUS_ACCEPTED};
use ledger_client::LedgerClient;

const SHARDS: u32 = 4;
const BACKUP: &str = "before-the-second-wave";

/// Runs `ledgerctl --node URL ARGS...`; returns its stdout, failing with its output if it
/// exits unsuccessfully.
fn ledgerctl(node_url: &str, arguments: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_ledgerctl"))
        .arg("--node")
        .arg(node_url)
        .args(arguments)
        .output()
        .context("running ledgerctl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "ledgerctl {arguments:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Debits 10 credits from every account under the key `{wave}-{account}`.
async fn debit_wave(client: &LedgerClient, accounts: &[String], wave: &str) -> anyhow::Result<()> {
    for account in accounts {
        let outcome = client
            .debit(account, &format!("{wave}-{account}"), 10)
            .await?;
        ensure!(
            outcome.status == STATUS_ACCEPTED,
            "{wave} on {account}: {outcome:?}"
        );
    }
    Ok(())
}

fn copy_directory(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_directory(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_its_backups_is_exactly_as_it_was_at_the_backup(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_ready("backup_restore", 3, SHARDS).await?;
    let client = cluster.client()?;
    let node_url = cluster.node(1).url();
    let accounts = accounts_covering_shards("backup", SHARDS, 2);
    for account in &accounts {
        client.create_account(account, None).await?;
        client
            .grant(account, &CreateGrantRequest::new("g", 100, "purchase"))
            .await?;
    }
    debit_wave(&client, &accounts, "first").await?;
    cluster.wait_for_replicas_in_sync().await?;

    let status = ledgerctl(&node_url, &["status"])?;
    ensure!(
        status.contains("in sync") && !status.contains("DOWN"),
        "{status}"
    );
    let shards = ledgerctl(&node_url, &["shards"])?;
    ensure!(shards.lines().count() == 1 + SHARDS as usize, "{shards}");

    let backup = ledgerctl(&node_url, &["backup", BACKUP])?;
    ensure!(backup.lines().count() == 3, "one line per node:\n{backup}");
    // The same name again is refused, on every node, and changes nothing.
    let again = client
        .backup(&node_url, BACKUP)
        .await
        .expect_err("an existing backup is never replaced");
    assert_eq!(
        (again.status(), again.code()),
        (Some(409), Some(codes::BACKUP_EXISTS))
    );
    let bad_name = client
        .backup(&node_url, "../elsewhere")
        .await
        .expect_err("a name is an identifier");
    assert_eq!(bad_name.status(), Some(400));

    debit_wave(&client, &accounts, "second").await?;
    let before_restore = client.get_account(&accounts[0]).await?;
    assert_eq!(before_restore.consumed, 20);

    cluster.terminate_all().await?;
    for id in cluster.node_ids() {
        let data_dir = cluster.node(id).data_dir.clone();
        let live = data_dir.join("rocksdb");
        std::fs::rename(&live, data_dir.join("rocksdb-replaced"))?;
        copy_directory(&data_dir.join("backups").join(BACKUP), &live)?;
    }
    for id in cluster.node_ids() {
        cluster.spawn(id)?;
    }
    cluster.wait_for_health().await?;
    cluster.wait_for_leaders().await?;

    for account in &accounts {
        let restored = client.get_account(account).await?;
        ensure!(
            restored.consumed == 10 && restored.available == 90,
            "{account} after the restore: {restored:?}"
        );
        let first = client
            .get_debit(account, &format!("first-{account}"))
            .await?
            .with_context(|| format!("first-{account} is unknown after the restore"))?;
        ensure!(first.status == STATUS_ACCEPTED, "{first:?}");
        let second = client
            .get_debit(account, &format!("second-{account}"))
            .await?;
        ensure!(
            second.is_none(),
            "second-{account} was after the backup: {second:?}"
        );
    }
    // The restored cluster takes new writes and its replicas agree.
    debit_wave(&client, &accounts, "third").await?;
    cluster.wait_for_replicas_in_sync().await?;
    cluster.terminate_all().await?;
    cluster.pass();
    Ok(())
}

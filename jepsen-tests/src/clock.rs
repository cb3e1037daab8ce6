//! Clock faults with libfaketime: each node runs with `LD_PRELOAD` of libfaketime and reads
//! its wall-clock offset from a file of its own (`FAKETIME_TIMESTAMP_FILE`), which the clock
//! nemesis rewrites (`+0`, `+300`, `-42`: seconds). The monotonic clock is left alone
//! (`DONT_FAKE_MONOTONIC=1`): timers, timeouts and Raft elections keep working; only what the
//! node believes the date is (the leader's time stamps, log time stamps) moves.
//!
//! Before a run relies on it, [`verify_in_ledgerd`] starts the very `ledgerd` binary under
//! libfaketime and checks through the API that the leader's time stamps follow the offset file,
//! also after it is rewritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_api::CreateGrantRequest;
use ledger_client::{ClientOptions, LedgerClient};

use crate::error::HarnessError;
use crate::history::wall_clock_ms;

/// Where Debian's `libfaketime` package puts the multi-threaded variant of the library.
const LIBRARY_CANDIDATES: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// How long libfaketime may keep an offset before reading the file again: a short cache
/// instead of none, because ledgerd reads the clock often and every uncached read opens the
/// file. A change therefore takes effect within this.
pub const OFFSET_CACHE_SECONDS: u64 = 1;

/// The located library.
#[derive(Clone, Debug)]
pub struct Faketime {
    pub library: PathBuf,
}

impl Faketime {
    /// Finds libfaketime; installs it with apt-get when missing and running as root.
    pub fn locate_or_install() -> Result<Faketime, HarnessError> {
        if let Some(library) = find_library() {
            return Ok(Faketime { library });
        }
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        if !is_root {
            return Err(HarnessError::Clock {
                message: "libfaketime is not installed (apt-get install faketime), and the \
                          harness is not root to install it"
                    .to_owned(),
            });
        }
        eprintln!("installing libfaketime (apt-get install -y faketime)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "faketime"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|error| HarnessError::Clock {
                message: format!("cannot run apt-get: {error}"),
            })?;
        match find_library() {
            Some(library) if status.success() => Ok(Faketime { library }),
            _ => Err(HarnessError::Clock {
                message: format!("apt-get install faketime exited with {status}"),
            }),
        }
    }

    /// The environment of a process whose wall clock follows `offset_file`.
    pub fn environment(&self, offset_file: &Path) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".to_owned(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_owned(),
                offset_file.display().to_string(),
            ),
            (
                "FAKETIME_CACHE_DURATION".to_owned(),
                OFFSET_CACHE_SECONDS.to_string(),
            ),
            ("DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ]
    }
}

fn find_library() -> Option<PathBuf> {
    LIBRARY_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Writes a node's clock offset in libfaketime's relative format.
pub fn write_offset(offset_file: &Path, offset_seconds: i64) -> Result<(), HarnessError> {
    let text = format!("{offset_seconds:+}\n");
    // Written to a temporary file and renamed, so that the library never reads a half file.
    let temporary = offset_file.with_extension("tmp");
    std::fs::write(&temporary, text).map_err(HarnessError::io("writing", &temporary))?;
    std::fs::rename(&temporary, offset_file).map_err(HarnessError::io("renaming to", offset_file))
}

/// Unix milliseconds of a log line's leading RFC 3339 time stamp (`2026-11-25T06:07:35.123Z`,
/// as tracing-subscriber prints them), or `None`.
pub fn rfc3339_to_unix_ms(line: &str) -> Option<i64> {
    let stamp = line.trim_start().get(..19)?;
    let bytes = stamp.as_bytes();
    if bytes.get(4) != Some(&b'-') || bytes.get(10) != Some(&b'T') || bytes.get(13) != Some(&b':') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Starts `ledgerd` (one node, its own temporary directory and ports) with a one-day clock
/// offset and checks, through the public API, that the leader's time stamps follow the file:
/// a grant made without `effective_at` is stamped with the leader's clock, so its
/// `effective_at` must be a day ahead; after the file is rewritten to two days, a later grant
/// must be stamped two days ahead (within a deadline: libfaketime caches the offset).
pub async fn verify_in_ledgerd(
    faketime: &Faketime,
    ledgerd: &Path,
    work_dir: &Path,
    http_port: u16,
    raft_port: u16,
) -> Result<(), HarnessError> {
    const DAY_MS: i64 = 86_400_000;
    let directory = work_dir.join("clock-probe");
    std::fs::create_dir_all(&directory).map_err(HarnessError::io("creating", &directory))?;
    let offset_file = directory.join("offset");
    write_offset(&offset_file, DAY_MS / 1_000)?;
    let config = format!(
        "node_id = 1\ndata_dir = \"{data}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\n\
         raft_addr = \"127.0.0.1:{raft_port}\"\n[cluster]\nshards = 1\nreplication = 1\n\
         nodes = [ {{ id = 1, http_addr = \"127.0.0.1:{http_port}\", raft_addr = \"127.0.0.1:{raft_port}\" }} ]\n",
        data = directory.join("data").display()
    );
    let config_path = directory.join("probe.toml");
    std::fs::write(&config_path, config).map_err(HarnessError::io("writing", &config_path))?;
    let log_path = directory.join("probe.log");
    let log = std::fs::File::create(&log_path).map_err(HarnessError::io("creating", &log_path))?;
    let log_err = log
        .try_clone()
        .map_err(HarnessError::io("sharing", &log_path))?;
    let mut child = Command::new(ledgerd)
        .arg("--config")
        .arg(&config_path)
        .envs(faketime.environment(&offset_file))
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(HarnessError::io("spawning", ledgerd))?;
    let result = probe_stamps(&offset_file, http_port, &log_path).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(directory.join("data"));
    result
}

async fn probe_stamps(
    offset_file: &Path,
    http_port: u16,
    log_path: &Path,
) -> Result<(), HarnessError> {
    const DAY_MS: i64 = 86_400_000;
    let failure = |message: String| HarnessError::Clock {
        message: format!("{message}; probe log {}", log_path.display()),
    };
    let url = format!("http://127.0.0.1:{http_port}");
    let client = LedgerClient::with_options(
        vec![url],
        ClientOptions {
            request_timeout_ms: 2_000,
            max_attempts: 1,
            ..ClientOptions::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut grant_number = 0_u32;
    let mut expected_days = 1;
    loop {
        if Instant::now() >= deadline {
            return Err(failure(format!(
                "ledgerd's leader time stamps did not follow a {expected_days}-day offset \
                 within the deadline"
            )));
        }
        grant_number += 1;
        match stamp_skew_ms(&client, grant_number).await {
            Ok(skew_ms) if (skew_ms - expected_days * DAY_MS).abs() < 60_000 => {
                if expected_days == 2 {
                    return Ok(());
                }
                expected_days = 2;
                write_offset(offset_file, 2 * DAY_MS / 1_000)?;
            }
            Ok(skew_ms) if expected_days == 1 || (skew_ms - DAY_MS).abs() >= 60_000 => {
                return Err(failure(format!(
                    "a grant was stamped {skew_ms} ms from the real clock, expected about \
                     {} ms",
                    expected_days * DAY_MS
                )));
            }
            // Still the old offset: libfaketime has not re-read the file yet.
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Makes grant number `number` on the probe account and returns how far its `effective_at`
/// (the leader's stamp) is from the harness's clock.
async fn stamp_skew_ms(client: &LedgerClient, number: u32) -> Result<i64, String> {
    const ACCOUNT: &str = "clock-probe";
    client
        .create_account(ACCOUNT, None)
        .await
        .map_err(|error| error.to_string())?;
    let grant_id = format!("probe-{number}");
    client
        .grant(ACCOUNT, &CreateGrantRequest::new(&grant_id, 1, "manual"))
        .await
        .map_err(|error| error.to_string())?;
    let before_ms = wall_clock_ms() as i64;
    let account = client
        .get_account(ACCOUNT)
        .await
        .map_err(|error| error.to_string())?;
    let grant = account
        .grants
        .iter()
        .find(|grant| grant.grant_id == grant_id)
        .ok_or_else(|| format!("grant {grant_id} missing"))?;
    let stamp_ms = rfc3339_to_unix_ms(&grant.effective_at)
        .ok_or_else(|| format!("effective_at {:?} is not RFC 3339", grant.effective_at))?;
    Ok(stamp_ms - before_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_time_stamps() {
        assert_eq!(
            rfc3339_to_unix_ms("1970-01-01T00:00:01.5Z  INFO x"),
            Some(1_000)
        );
        assert_eq!(
            rfc3339_to_unix_ms("2000-03-01T00:00:00.000000Z  INFO ledgerd: serving"),
            Some(951_868_800_000)
        );
        assert_eq!(rfc3339_to_unix_ms("===== harness: start"), None);
    }

    #[test]
    fn writes_offsets_with_a_sign() {
        let path = std::env::temp_dir().join(format!("jepsen-offset-{}", std::process::id()));
        write_offset(&path, -42).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "-42\n");
        write_offset(&path, 0).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "+0\n");
        let _ = std::fs::remove_file(&path);
    }
}

//! The physical reference of every durable system on this machine: how many synced writes per
//! second the disk completes, one after the other. A system that fsyncs once per request can
//! never answer more requests per second than this with one client; anything above it comes
//! from sharing one fsync between many requests (group commit, batching).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// What [`measure_fsyncs`] found.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FsyncRate {
    pub fsyncs: u64,
    pub seconds: f64,
    pub fsyncs_per_sec: f64,
    pub mean_ms: f64,
    pub write_bytes: usize,
}

/// Appends `write_bytes` to a new file in `directory` and `fdatasync`s it, again and again for
/// `duration` (at least once); the file is removed afterwards.
pub fn measure_fsyncs(
    directory: &Path,
    duration: Duration,
    write_bytes: usize,
) -> std::io::Result<FsyncRate> {
    let path = directory.join(format!("fsync-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5au8; write_bytes.max(1)];
    let started = Instant::now();
    let mut fsyncs = 0u64;
    // At least one synced write, however short the duration (or however late this thread runs).
    let result = loop {
        if let Err(error) = file.write_all(&block).and_then(|()| file.sync_data()) {
            break Err(error);
        }
        fsyncs += 1;
        if started.elapsed() >= duration {
            break Ok(());
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(FsyncRate {
        fsyncs,
        seconds,
        fsyncs_per_sec: fsyncs as f64 / seconds.max(f64::MIN_POSITIVE),
        mean_ms: seconds * 1_000.0 / (fsyncs.max(1) as f64),
        write_bytes: block.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_cleans_up() {
        let directory = tempfile::tempdir().expect("temp dir");
        let rate =
            measure_fsyncs(directory.path(), Duration::from_millis(50), 4096).expect("measured");
        assert!(rate.fsyncs >= 1, "{rate:?}");
        assert_eq!(rate.write_bytes, 4096);
        assert!(
            (rate.fsyncs_per_sec * rate.seconds - rate.fsyncs as f64).abs() < 1e-6,
            "{rate:?}"
        );
        let left: Vec<_> = std::fs::read_dir(directory.path())
            .expect("readable")
            .collect();
        assert!(left.is_empty(), "probe file left behind: {left:?}");
    }
}

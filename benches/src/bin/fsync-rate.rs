//! Measures the disk's synced writes per second (write + fdatasync, one after the other): the
//! physical bound that group commit and batching exist to beat.
//! `fsync-rate --dir /tmp --seconds 5 --bytes 4096`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Synced writes per second of the disk under --dir")]
struct Arguments {
    /// Directory on the disk to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes appended before each fdatasync.
    #[arg(long, default_value_t = 4096)]
    bytes: usize,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let rate = benches::fsync::measure_fsyncs(
        &arguments.dir,
        Duration::from_secs(arguments.seconds),
        arguments.bytes,
    )
    .with_context(|| format!("measuring fsyncs in {}", arguments.dir.display()))?;
    if arguments.json {
        println!("{}", serde_json::to_string(&rate)?);
    } else {
        println!(
            "{:.0} fsyncs/s ({} writes of {} bytes + fdatasync in {:.1} s, {:.2} ms each)",
            rate.fsyncs_per_sec, rate.fsyncs, rate.write_bytes, rate.seconds, rate.mean_ms
        );
    }
    Ok(())
}

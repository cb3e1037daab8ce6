//! Prints the side-by-side table of `loadgen --output` summaries, with the ratio of a reference
//! system's debits/s to every other's: `peer-table --reference ledger-3 results/*.json`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use benches::Summary;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Side-by-side table of loadgen summaries")]
struct Arguments {
    /// Label of the system the others are compared with.
    #[arg(long, default_value = "ledger-3")]
    reference: String,
    /// Summary files written by `loadgen --output`.
    files: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let mut summaries = Vec::new();
    for path in &arguments.files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let summary: Summary = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a loadgen summary", path.display()))?;
        summaries.push(summary);
    }
    print!(
        "{}",
        benches::table::render_table(&summaries, &arguments.reference)
    );
    Ok(())
}

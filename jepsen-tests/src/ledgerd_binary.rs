//! How a run gets its `ledgerd`: built by cargo from this workspace (release profile, the
//! caller's `CARGO_TARGET_DIR`) or given with `--ledgerd`, then copied into the run directory so
//! that a later build cannot swap the binary under a running test.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::HarnessError;

/// The cargo feature of `ledgerd` that compiles in the named bugs of the self-test.
pub const FAULT_INJECTION_FEATURE: &str = "fault-injection";

/// The workspace root: the parent of this crate's manifest directory. `cargo run` names that
/// directory in the run's environment; the path compiled in is only the fallback, because a
/// binary built for a clone elsewhere that shares the same `CARGO_TARGET_DIR` (CI clones do) is
/// not rebuilt when only the clone's path differs, and would point at that other clone.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.clone())
}

/// Whether `crates/ledgerd/Cargo.toml` declares the fault-injection feature (the ledger adds it
/// separately from the harness; until it exists, normal runs build without it).
pub fn ledgerd_declares_fault_injection(workspace_root: &Path) -> bool {
    let manifest = workspace_root.join("crates/ledgerd/Cargo.toml");
    let Ok(text) = std::fs::read_to_string(manifest) else {
        return false;
    };
    let mut in_features = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if in_features && line.starts_with(FAULT_INJECTION_FEATURE) {
            return true;
        }
    }
    false
}

/// The features to build `ledgerd` with. Normal runs use the same binary as self-tests (the
/// bugs stay off without `LEDGER_FAULT_INJECTION`), so a passing normal run and a caught bug
/// are about one build; while the feature does not exist yet, a normal run builds without it and
/// a self-test cannot run.
pub fn ledgerd_features(
    bug: Option<&str>,
    feature_declared: bool,
) -> Result<Vec<&'static str>, HarnessError> {
    match (bug, feature_declared) {
        (_, true) => Ok(vec![FAULT_INJECTION_FEATURE]),
        (None, false) => Ok(Vec::new()),
        (Some(bug), false) => Err(HarnessError::Build {
            message: format!(
                "--bug {bug} needs ledgerd's `{FAULT_INJECTION_FEATURE}` feature, which \
                 crates/ledgerd/Cargo.toml does not declare yet"
            ),
        }),
    }
}

/// Runs `cargo build --release -p ledgerd [--features ...]` in the workspace root with the
/// inherited `CARGO_TARGET_DIR`, and returns the built binary's path.
pub fn build_ledgerd(workspace_root: &Path, features: &[&str]) -> Result<PathBuf, HarnessError> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command
        .current_dir(workspace_root)
        .args(["build", "--release", "-p", "ledgerd"]);
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    eprintln!(
        "building ledgerd: cargo build --release -p ledgerd{}",
        if features.is_empty() {
            String::new()
        } else {
            format!(" --features {}", features.join(","))
        }
    );
    let status = command.status().map_err(|error| HarnessError::Build {
        message: format!("cannot run cargo: {error}"),
    })?;
    if !status.success() {
        return Err(HarnessError::Build {
            message: format!("cargo build exited with {status}"),
        });
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"));
    let binary = target_dir.join("release").join("ledgerd");
    if !binary.is_file() {
        return Err(HarnessError::Build {
            message: format!("no binary at {} after the build", binary.display()),
        });
    }
    Ok(binary)
}

/// Copies the binary into the run directory (keeping it executable) and returns the copy.
pub fn install_into_run_dir(binary: &Path, run_dir: &Path) -> Result<PathBuf, HarnessError> {
    let copy = run_dir.join("ledgerd");
    std::fs::copy(binary, &copy).map_err(HarnessError::io("copying ledgerd to", &copy))?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_bug_and_the_declared_feature() {
        assert!(ledgerd_features(None, false).expect("allowed").is_empty());
        assert_eq!(
            ledgerd_features(None, true).expect("allowed"),
            vec![FAULT_INJECTION_FEATURE]
        );
        assert_eq!(
            ledgerd_features(Some("ack-before-commit"), true).expect("allowed"),
            vec![FAULT_INJECTION_FEATURE]
        );
        assert!(ledgerd_features(Some("ack-before-commit"), false).is_err());
    }

    #[test]
    fn detects_a_declared_feature() {
        let directory =
            std::env::temp_dir().join(format!("jepsen-tests-feature-{}", std::process::id()));
        let manifest_dir = directory.join("crates/ledgerd");
        std::fs::create_dir_all(&manifest_dir).expect("a temp dir");
        let manifest = manifest_dir.join("Cargo.toml");
        std::fs::write(&manifest, "[package]\nname = \"ledgerd\"\n").expect("write");
        assert!(!ledgerd_declares_fault_injection(&directory));
        std::fs::write(
            &manifest,
            "[package]\nname = \"ledgerd\"\n[features]\nfault-injection = [\"x/y\"]\n",
        )
        .expect("write");
        assert!(ledgerd_declares_fault_injection(&directory));
        let _ = std::fs::remove_dir_all(&directory);
    }
}

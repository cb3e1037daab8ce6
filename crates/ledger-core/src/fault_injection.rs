//! Named bugs for the chaos harness's self-test (`jepsen-tests --bug NAME`): with the
//! `fault-injection` feature, the node enables them at start from `LEDGER_FAULT_INJECTION`.
//! Without the feature every switch is a constant `false` and the code paths it guards compile
//! away. Never enabled in builds that serve users.

#[cfg(feature = "fault-injection")]
mod switches {
    use std::sync::atomic::{AtomicBool, Ordering};

    static SKIP_IDEMPOTENCY_CHECK: AtomicBool = AtomicBool::new(false);

    /// Makes every debit ignore its idempotency record, so that a retry applies again.
    pub fn enable_skip_idempotency_check() {
        SKIP_IDEMPOTENCY_CHECK.store(true, Ordering::Relaxed);
    }

    pub fn skip_idempotency_check() -> bool {
        SKIP_IDEMPOTENCY_CHECK.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "fault-injection")]
pub use switches::*;

/// Whether debits ignore their idempotency records (always `false` without the feature).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn skip_idempotency_check() -> bool {
    false
}

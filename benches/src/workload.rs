//! What the load generator sends: account ids, the mix of operations and the settings of one
//! workload that every driver receives alike.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The account id of account number `index`. Every driver uses the same ids, so the same seed
/// touches the same accounts on every system.
pub fn account_id(index: u64) -> String {
    format!("{ACCOUNT_ID_PREFIX}{index}")
}

/// What every account id starts with (the PostgreSQL driver builds the ids in SQL from it).
pub const ACCOUNT_ID_PREFIX: &str = "loadgen-";

/// Invalid settings of a workload, found before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid operation mix {text:?}: {reason}")]
    InvalidMix { text: String, reason: String },
    #[error("invalid account distribution: {reason}")]
    InvalidDistribution { reason: String },
    #[error("invalid open-loop rate: {reason}")]
    InvalidRate { reason: String },
}

/// One kind of operation of the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// One debit (`--batch 1`) or one batch of debits.
    Debit,
    /// A linearizable balance read of one account.
    Read,
    /// A reservation of twice the debit amount, then its commit of the debit amount: the
    /// pattern of a streaming AI call whose final cost is known only at the end.
    Reserve,
}

impl OperationKind {
    pub const ALL: [OperationKind; 3] = [
        OperationKind::Debit,
        OperationKind::Read,
        OperationKind::Reserve,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Debit => "debit",
            OperationKind::Read => "read",
            OperationKind::Reserve => "reserve",
        }
    }

    /// Position in per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            OperationKind::Debit => 0,
            OperationKind::Read => 1,
            OperationKind::Reserve => 2,
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Relative weights of the operation kinds, e.g. `debit=90,read=10` (kinds left out weigh 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Weight of each kind, indexed by [`OperationKind::index`]; their sum is positive.
    weights: [u32; 3],
}

impl Mix {
    /// Debits only.
    pub fn debits_only() -> Mix {
        Mix { weights: [1, 0, 0] }
    }

    pub fn weight(&self, kind: OperationKind) -> u32 {
        self.weights[kind.index()]
    }

    /// Draws the kind of the next operation with probability weight / total.
    pub fn choose<R: Rng>(&self, random: &mut R) -> OperationKind {
        let total: u32 = self.weights.iter().sum();
        let mut ticket = random.gen_range(0..total);
        for kind in OperationKind::ALL {
            let weight = self.weight(kind);
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        unreachable!("the ticket is below the sum of the weights")
    }
}

impl FromStr for Mix {
    type Err = WorkloadError;

    fn from_str(text: &str) -> Result<Mix, WorkloadError> {
        let invalid = |reason: String| WorkloadError::InvalidMix {
            text: text.to_owned(),
            reason,
        };
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("{part:?} is not kind=weight")))?;
            let kind = OperationKind::ALL
                .into_iter()
                .find(|kind| kind.name() == name.trim())
                .ok_or_else(|| {
                    invalid(format!(
                        "unknown operation {name:?} (expected debit, read or reserve)"
                    ))
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| invalid(format!("weight of {name} is not a whole number")))?;
            if std::mem::replace(&mut seen[kind.index()], true) {
                return Err(invalid(format!("{name} is given twice")));
            }
            weights[kind.index()] = weight;
        }
        if weights.iter().map(|weight| u64::from(*weight)).sum::<u64>() == 0 {
            return Err(invalid("the weights add up to zero".to_owned()));
        }
        if weights.iter().map(|weight| u64::from(*weight)).sum::<u64>() > u64::from(u32::MAX) {
            return Err(invalid("the weights add up to more than 2^32".to_owned()));
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = OperationKind::ALL
            .into_iter()
            .filter(|kind| self.weight(*kind) > 0)
            .map(|kind| format!("{}={}", kind.name(), self.weight(kind)))
            .collect();
        formatter.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mix_parses_and_prints_back() {
        let table = [
            ("debit=90,read=10", "debit=90,read=10"),
            ("debit=1", "debit=1"),
            (" reserve=3 , debit=1 ", "debit=1,reserve=3"),
            ("debit=0,read=5", "read=5"),
        ];
        for (text, printed) in table {
            let mix: Mix = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(mix.to_string(), printed, "{text}");
        }
        let mix: Mix = "debit=90,read=10".parse().expect("valid");
        assert_eq!(mix.weight(OperationKind::Debit), 90);
        assert_eq!(mix.weight(OperationKind::Read), 10);
        assert_eq!(mix.weight(OperationKind::Reserve), 0);
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        for text in [
            "",
            "debit",
            "debit=x",
            "debit=-1",
            "write=3",
            "debit=1,debit=2",
            "debit=0",
            "debit=4294967295,read=1",
        ] {
            let result = text.parse::<Mix>();
            assert!(
                matches!(result, Err(WorkloadError::InvalidMix { .. })),
                "{text:?} gave {result:?}"
            );
        }
    }

    /// The drawn frequencies match the weights within five standard deviations of a binomial.
    #[test]
    fn mix_draws_in_proportion_to_the_weights() {
        let seed = crate::test_support::seed();
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let mix: Mix = "debit=70,read=20,reserve=10".parse().expect("valid");
        let draws = 100_000u32;
        let mut counts = [0u32; 3];
        for _ in 0..draws {
            counts[mix.choose(&mut random).index()] += 1;
        }
        for kind in OperationKind::ALL {
            let probability = f64::from(mix.weight(kind)) / 100.0;
            let expected = probability * f64::from(draws);
            let deviation = (f64::from(draws) * probability * (1.0 - probability)).sqrt();
            let count = f64::from(counts[kind.index()]);
            assert!(
                (count - expected).abs() <= 5.0 * deviation,
                "seed {seed}: {kind} drawn {count} times, expected {expected:.0} ± {:.0}",
                5.0 * deviation
            );
        }
    }

    #[test]
    fn account_ids_are_stable() {
        assert_eq!(account_id(0), "loadgen-0");
        assert_eq!(account_id(99_999), "loadgen-99999");
    }
}

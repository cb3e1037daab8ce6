//! Which account an operation touches: uniform over all accounts, zipfian (a few accounts take
//! most of the traffic, as with real customers), or one hot account (the worst case of a single
//! customer running thousands of parallel agents).

use std::fmt;

use rand::Rng;

use crate::workload::WorkloadError;

/// Most accounts a zipfian distribution supports: its table holds one `f64` per account.
pub const ZIPFIAN_ACCOUNTS_MAX: u64 = 50_000_000;

/// A sampler of account numbers in `0..accounts`. Cheap to share (`Arc`) between workers.
#[derive(Clone, Debug)]
pub enum AccountDistribution {
    /// Every account equally likely.
    Uniform { accounts: u64 },
    /// Account number `k` (rank `k + 1`) is drawn with probability proportional to
    /// `1 / (k + 1)^exponent`.
    Zipfian(Zipfian),
    /// Account number 0 only.
    Hot,
}

impl AccountDistribution {
    pub fn uniform(accounts: u64) -> Result<AccountDistribution, WorkloadError> {
        if accounts == 0 {
            return Err(WorkloadError::InvalidDistribution {
                reason: "at least one account is needed".to_owned(),
            });
        }
        Ok(AccountDistribution::Uniform { accounts })
    }

    pub fn zipfian(accounts: u64, exponent: f64) -> Result<AccountDistribution, WorkloadError> {
        Zipfian::new(accounts, exponent).map(AccountDistribution::Zipfian)
    }

    pub fn hot() -> AccountDistribution {
        AccountDistribution::Hot
    }

    /// Parses `uniform`, `zipfian` or `hot`.
    pub fn from_name(
        name: &str,
        accounts: u64,
        zipf_exponent: f64,
    ) -> Result<AccountDistribution, WorkloadError> {
        match name {
            "uniform" => AccountDistribution::uniform(accounts),
            "zipfian" => AccountDistribution::zipfian(accounts, zipf_exponent),
            "hot" => Ok(AccountDistribution::hot()),
            other => Err(WorkloadError::InvalidDistribution {
                reason: format!(
                    "unknown distribution {other:?} (expected uniform, zipfian or hot)"
                ),
            }),
        }
    }

    /// Draws an account number.
    pub fn sample<R: Rng>(&self, random: &mut R) -> u64 {
        match self {
            AccountDistribution::Uniform { accounts } => random.gen_range(0..*accounts),
            AccountDistribution::Zipfian(zipfian) => zipfian.sample(random),
            AccountDistribution::Hot => 0,
        }
    }

    /// The probability of drawing account number `index`.
    pub fn probability(&self, index: u64) -> f64 {
        match self {
            AccountDistribution::Uniform { accounts } => {
                if index < *accounts {
                    1.0 / *accounts as f64
                } else {
                    0.0
                }
            }
            AccountDistribution::Zipfian(zipfian) => zipfian.probability(index),
            AccountDistribution::Hot => {
                if index == 0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

impl fmt::Display for AccountDistribution {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountDistribution::Uniform { .. } => formatter.write_str("uniform"),
            AccountDistribution::Zipfian(zipfian) => {
                write!(formatter, "zipfian(s={})", zipfian.exponent)
            }
            AccountDistribution::Hot => formatter.write_str("hot"),
        }
    }
}

/// Exact zipfian sampling by inversion of the cumulative distribution: a table of `accounts`
/// cumulative probabilities and a binary search per draw. Exact for every exponent (the
/// rejection-free approximation of Gray et al. used by YCSB only holds for exponents below 1),
/// at 8 bytes per account.
#[derive(Clone, Debug)]
pub struct Zipfian {
    exponent: f64,
    /// `cumulative[k]` = P(account number ≤ k); the last one is exactly 1.
    cumulative: Vec<f64>,
}

impl Zipfian {
    pub fn new(accounts: u64, exponent: f64) -> Result<Zipfian, WorkloadError> {
        let invalid = |reason: String| WorkloadError::InvalidDistribution { reason };
        if accounts == 0 {
            return Err(invalid("at least one account is needed".to_owned()));
        }
        if accounts > ZIPFIAN_ACCOUNTS_MAX {
            return Err(invalid(format!(
                "zipfian supports at most {ZIPFIAN_ACCOUNTS_MAX} accounts"
            )));
        }
        if !(exponent.is_finite() && exponent > 0.0) {
            return Err(invalid(format!(
                "the zipf exponent must be positive, got {exponent}"
            )));
        }
        let mut cumulative = Vec::with_capacity(accounts as usize);
        let mut total = 0.0;
        for rank in 1..=accounts {
            total += (rank as f64).powf(-exponent);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        // Rounding may leave the last value a hair below 1; a draw of u in [that, 1) must still
        // land on the last account.
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Zipfian {
            exponent,
            cumulative,
        })
    }

    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    pub fn sample<R: Rng>(&self, random: &mut R) -> u64 {
        let ticket: f64 = random.gen();
        // The first account whose cumulative probability exceeds the ticket.
        let index = self.cumulative.partition_point(|value| *value <= ticket);
        index.min(self.cumulative.len() - 1) as u64
    }

    pub fn probability(&self, index: u64) -> f64 {
        let index = index as usize;
        match index {
            _ if index >= self.cumulative.len() => 0.0,
            0 => self.cumulative[0],
            _ => self.cumulative[index] - self.cumulative[index - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Draws `draws` samples and checks every account's frequency against `probability` within
    /// five binomial standard deviations (plus one draw of slack for tiny probabilities).
    fn assert_frequencies_match(distribution: &AccountDistribution, accounts: u64, draws: u32) {
        let seed = crate::test_support::seed();
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let mut counts = vec![0u32; accounts as usize];
        for _ in 0..draws {
            let index = distribution.sample(&mut random);
            assert!(index < accounts, "seed {seed}: drew {index} of {accounts}");
            counts[index as usize] += 1;
        }
        for (index, count) in counts.iter().enumerate() {
            let probability = distribution.probability(index as u64);
            let expected = probability * f64::from(draws);
            let deviation = (f64::from(draws) * probability * (1.0 - probability)).sqrt();
            assert!(
                (f64::from(*count) - expected).abs() <= 5.0 * deviation + 1.0,
                "seed {seed}: {distribution} account {index} drawn {count} times, \
                 expected {expected:.1} ± {:.1}",
                5.0 * deviation
            );
        }
    }

    #[test]
    fn uniform_draws_every_account_equally() {
        let distribution = AccountDistribution::uniform(20).expect("valid");
        assert_frequencies_match(&distribution, 20, 200_000);
    }

    #[test]
    fn zipfian_probabilities_follow_the_power_law() {
        let exponent = 1.2;
        let distribution = AccountDistribution::zipfian(50, exponent).expect("valid");
        // Independent of the table: the ratio of two ranks' probabilities is a power of the
        // ratio of the ranks, and the probabilities add up to one.
        let total: f64 = (0..50).map(|index| distribution.probability(index)).sum();
        assert!(
            (total - 1.0).abs() < 1e-12,
            "probabilities add up to {total}"
        );
        for (first, second) in [(0u64, 1u64), (0, 9), (4, 49)] {
            let measured = distribution.probability(first) / distribution.probability(second);
            let expected = ((second + 1) as f64 / (first + 1) as f64).powf(exponent);
            assert!(
                (measured / expected - 1.0).abs() < 1e-9,
                "p({first})/p({second}) = {measured}, expected {expected}"
            );
        }
        let harmonic: f64 = (1..=50).map(|rank| (rank as f64).powf(-exponent)).sum();
        assert!((distribution.probability(0) - 1.0 / harmonic).abs() < 1e-12);
        assert_eq!(distribution.probability(50), 0.0);
    }

    #[test]
    fn zipfian_draws_match_its_probabilities() {
        for exponent in [0.5, 0.99, 1.5] {
            let distribution = AccountDistribution::zipfian(30, exponent).expect("valid");
            assert_frequencies_match(&distribution, 30, 300_000);
        }
    }

    #[test]
    fn zipfian_of_one_account_and_hot_always_draw_account_zero() {
        let seed = crate::test_support::seed();
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let single = AccountDistribution::zipfian(1, 0.99).expect("valid");
        let hot = AccountDistribution::hot();
        for _ in 0..1_000 {
            assert_eq!(single.sample(&mut random), 0);
            assert_eq!(hot.sample(&mut random), 0);
        }
        assert_eq!(hot.probability(0), 1.0);
        assert_eq!(hot.probability(1), 0.0);
    }

    #[test]
    fn invalid_distributions_are_refused() {
        for (name, accounts, exponent) in [
            ("uniform", 0, 1.0),
            ("zipfian", 0, 1.0),
            ("zipfian", 10, 0.0),
            ("zipfian", 10, -1.0),
            ("zipfian", 10, f64::NAN),
            ("zipfian", ZIPFIAN_ACCOUNTS_MAX + 1, 1.0),
            ("pareto", 10, 1.0),
        ] {
            assert!(
                AccountDistribution::from_name(name, accounts, exponent).is_err(),
                "{name} {accounts} {exponent}"
            );
        }
    }
}

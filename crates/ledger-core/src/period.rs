//! ISO 8601 durations ("P1M", "PT10S", "P1Y2M10DT2H30M") and the calendar arithmetic of
//! periods: plan periods and spend-limit windows are the instants `anchor + k × period`.
//!
//! A period has a calendar part (months; a year is 12 months, and adding a month keeps the day
//! of the month, clamped to the month's length: Jan 31 + 1 month = Feb 28 or 29) and an exact part
//! (milliseconds; weeks, days, hours, minutes and seconds, with days of exactly 24 hours, since
//! all instants are UTC). Boundary `k` is computed from the anchor directly, never by repeated
//! addition, so a monthly period anchored on the 31st comes back to the 31st whenever the month
//! has one.

use serde::{Deserialize, Serialize};

const MILLIS_PER_SECOND: u64 = 1_000;
const MILLIS_PER_MINUTE: u64 = 60 * MILLIS_PER_SECOND;
const MILLIS_PER_HOUR: u64 = 60 * MILLIS_PER_MINUTE;
const MILLIS_PER_DAY: u64 = 24 * MILLIS_PER_HOUR;

/// Longest period accepted: 100 years (in either part).
const MONTHS_MAX: u64 = 1_200;
const MILLIS_MAX: u64 = 36_525 * MILLIS_PER_DAY;
/// Shortest period accepted: one second, so that a period is never a busy loop of resets.
const PERIOD_MILLIS_MIN: u64 = MILLIS_PER_SECOND;

/// A period: `months` calendar months plus `millis` milliseconds. Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Period {
    pub months: u32,
    pub millis: u64,
}

/// Why a duration text is not a period we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("{text:?} is not an ISO 8601 duration such as P1M, P1D or PT10S")]
    Syntax { text: String },
    #[error("{text:?} is shorter than one second")]
    TooShort { text: String },
    #[error("{text:?} is longer than 100 years")]
    TooLong { text: String },
}

impl Period {
    /// Parses an ISO 8601 duration: `P[nY][nM][nW][nD][T[nH][nM][n[.fff]S]]` with integer
    /// components (seconds may have up to three decimals).
    pub fn parse(text: &str) -> Result<Period, PeriodError> {
        let syntax = || PeriodError::Syntax {
            text: text.to_owned(),
        };
        let rest = text.strip_prefix('P').ok_or_else(syntax)?;
        let (date_part, time_part) = match rest.split_once('T') {
            Some((date, time)) if !time.is_empty() => (date, Some(time)),
            Some(_) => return Err(syntax()),
            None => (rest, None),
        };
        if date_part.is_empty() && time_part.is_none() {
            return Err(syntax());
        }
        let mut months: u64 = 0;
        let mut millis: u64 = 0;
        // Designators must appear in this order, each at most once.
        let mut accept =
            |part: &str, designators: &[(char, u64, bool)]| -> Result<(), PeriodError> {
                let mut next_allowed = 0;
                let mut number = String::new();
                for character in part.chars() {
                    if character.is_ascii_digit() || character == '.' {
                        number.push(character);
                        continue;
                    }
                    let position = designators[next_allowed..]
                        .iter()
                        .position(|(designator, _, _)| *designator == character)
                        .ok_or_else(syntax)?
                        + next_allowed;
                    next_allowed = position + 1;
                    let (_, unit, is_months) = designators[position];
                    if number.is_empty() {
                        return Err(syntax());
                    }
                    let value = if is_months {
                        number
                            .parse::<u64>()
                            .map_err(|_| syntax())?
                            .checked_mul(unit)
                    } else if character == 'S' {
                        parse_seconds_millis(&number).ok_or_else(syntax).map(Some)?
                    } else {
                        number
                            .parse::<u64>()
                            .map_err(|_| syntax())?
                            .checked_mul(unit)
                    };
                    let value = value.ok_or_else(|| PeriodError::TooLong {
                        text: text.to_owned(),
                    })?;
                    if is_months {
                        months = months.saturating_add(value);
                    } else {
                        millis = millis.saturating_add(value);
                    }
                    number.clear();
                }
                if number.is_empty() {
                    Ok(())
                } else {
                    Err(syntax())
                }
            };
        accept(
            date_part,
            &[
                ('Y', 12, true),
                ('M', 1, true),
                ('W', 7 * MILLIS_PER_DAY, false),
                ('D', MILLIS_PER_DAY, false),
            ],
        )?;
        if let Some(time_part) = time_part {
            accept(
                time_part,
                &[
                    ('H', MILLIS_PER_HOUR, false),
                    ('M', MILLIS_PER_MINUTE, false),
                    ('S', MILLIS_PER_SECOND, false),
                ],
            )?;
        }
        if months > MONTHS_MAX || millis > MILLIS_MAX {
            return Err(PeriodError::TooLong {
                text: text.to_owned(),
            });
        }
        if months == 0 && millis < PERIOD_MILLIS_MIN {
            return Err(PeriodError::TooShort {
                text: text.to_owned(),
            });
        }
        Ok(Period {
            months: months as u32,
            millis,
        })
    }

    /// Whether this value could have come from `parse` (bounds checked); commands built by hand
    /// are checked with it in the state machine.
    pub fn is_valid(&self) -> bool {
        u64::from(self.months) <= MONTHS_MAX
            && self.millis <= MILLIS_MAX
            && (self.months > 0 || self.millis >= PERIOD_MILLIS_MIN)
    }

    /// The canonical ISO 8601 text: `P{months}M` and/or `T{seconds}S` parts, e.g. `P1M`,
    /// `PT86400S`, `P1MT1.5S`.
    pub fn to_iso(&self) -> String {
        let mut text = String::from("P");
        if self.months > 0 {
            text.push_str(&format!("{}M", self.months));
        }
        if self.millis > 0 {
            let seconds = self.millis / MILLIS_PER_SECOND;
            let fraction = self.millis % MILLIS_PER_SECOND;
            if fraction == 0 {
                text.push_str(&format!("T{seconds}S"));
            } else {
                let fraction = format!("{fraction:03}");
                text.push_str(&format!("T{seconds}.{}S", fraction.trim_end_matches('0')));
            }
        }
        text
    }

    /// Boundary `k` of the periods anchored at `anchor_ms`: `anchor + k × period`; `None` past
    /// the representable range.
    pub fn boundary(&self, anchor_ms: u64, k: u64) -> Option<u64> {
        let months = u64::from(self.months).checked_mul(k)?;
        let shifted = add_months(anchor_ms, months)?;
        shifted.checked_add(self.millis.checked_mul(k)?)
    }

    /// The index of the period containing `instant_ms`: the largest `k` with
    /// `boundary(k) <= instant_ms` (0 for instants before the anchor).
    pub fn index_at(&self, anchor_ms: u64, instant_ms: u64) -> u64 {
        if instant_ms <= anchor_ms {
            return 0;
        }
        // A month is at least 28 days: the estimate never overshoots by more than a few steps.
        let shortest = u64::from(self.months) * 28 * MILLIS_PER_DAY + self.millis;
        let longest = u64::from(self.months) * 31 * MILLIS_PER_DAY + self.millis;
        let elapsed = instant_ms - anchor_ms;
        let mut k = elapsed / longest.max(1);
        let upper = elapsed / shortest.max(1) + 1;
        // The boundaries are increasing in k: walk up from the lower estimate (at most about 10%
        // of the periods elapsed for monthly periods, none for exact ones).
        while k < upper {
            match self.boundary(anchor_ms, k + 1) {
                Some(next) if next <= instant_ms => k += 1,
                _ => break,
            }
        }
        k
    }
}

/// Seconds with up to three decimals, in milliseconds.
fn parse_seconds_millis(number: &str) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 3 || fraction.contains('.') {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<3}").parse().ok()?
    };
    whole.checked_mul(MILLIS_PER_SECOND)?.checked_add(fraction)
}

/// `instant_ms` (milliseconds since the Unix epoch, UTC) plus `months` calendar months, the day
/// of the month clamped to the target month's length, the time of day kept.
fn add_months(instant_ms: u64, months: u64) -> Option<u64> {
    if months == 0 {
        return Some(instant_ms);
    }
    let days = (instant_ms / MILLIS_PER_DAY) as i64;
    let time_of_day_ms = instant_ms % MILLIS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    let month_index = i64::from(month - 1).checked_add(i64::try_from(months).ok()?)?;
    let target_year = year.checked_add(month_index.div_euclid(12))?;
    let target_month = (month_index.rem_euclid(12) + 1) as u32;
    let target_day = day.min(days_in_month(target_year, target_month));
    let target_days = days_from_civil(target_year, target_month, target_day);
    u64::try_from(target_days)
        .ok()?
        .checked_mul(MILLIS_PER_DAY)?
        .checked_add(time_of_day_ms)
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_shifted = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_shifted + 2) / 5 + 1) as u32;
    let month = if month_shifted < 10 {
        month_shifted + 3
    } else {
        month_shifted - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant(year: i64, month: u32, day: u32) -> u64 {
        days_from_civil(year, month, day) as u64 * MILLIS_PER_DAY
    }

    #[test]
    fn parses_the_durations_of_the_contract() {
        let cases = [
            ("P1M", 1, 0),
            ("P1Y", 12, 0),
            ("P1Y2M", 14, 0),
            ("P1D", 0, MILLIS_PER_DAY),
            ("P2W", 0, 14 * MILLIS_PER_DAY),
            ("PT10S", 0, 10_000),
            ("PT2.5S", 0, 2_500),
            ("PT1H30M", 0, 90 * MILLIS_PER_MINUTE),
            ("P1MT1S", 1, 1_000),
            ("P1DT12H", 0, 36 * MILLIS_PER_HOUR),
        ];
        for (text, months, millis) in cases {
            assert_eq!(Period::parse(text), Ok(Period { months, millis }), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_period() {
        for text in [
            "",
            "P",
            "PT",
            "1M",
            "P1",
            "PM",
            "P1S",
            "PT1D",
            "P1M1Y",
            "P1.5M",
            "PT1.2345S",
            "P-1M",
            "p1m",
            "P1MT",
            "PT1S2S",
        ] {
            assert!(
                matches!(Period::parse(text), Err(PeriodError::Syntax { .. })),
                "{text:?} should be a syntax error, got {:?}",
                Period::parse(text)
            );
        }
        assert!(matches!(
            Period::parse("PT0S"),
            Err(PeriodError::TooShort { .. })
        ));
        assert!(matches!(
            Period::parse("PT0.5S"),
            Err(PeriodError::TooShort { .. })
        ));
        assert!(matches!(
            Period::parse("P101Y"),
            Err(PeriodError::TooLong { .. })
        ));
        assert!(matches!(
            Period::parse("P99999999999999999999D"),
            Err(PeriodError::Syntax { .. }) | Err(PeriodError::TooLong { .. })
        ));
    }

    #[test]
    fn canonical_text_parses_back() {
        for text in ["P1M", "PT10S", "P1Y", "P1D", "PT2.5S", "P3MT1.25S"] {
            let period = Period::parse(text).expect("valid");
            assert_eq!(Period::parse(&period.to_iso()), Ok(period), "{text}");
            assert!(period.is_valid());
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (year, month, day) = civil_from_days(days);
            assert!((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month));
            assert_eq!(days_from_civil(year, month, day), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn monthly_boundaries_clamp_to_the_month_and_come_back() {
        let monthly = Period::parse("P1M").expect("valid");
        let anchor = instant(2024, 1, 31) + 5 * MILLIS_PER_HOUR;
        let expected = [
            instant(2024, 1, 31),
            instant(2024, 2, 29),
            instant(2024, 3, 31),
            instant(2024, 4, 30),
            instant(2025, 1, 31),
        ];
        for (k, day) in [0, 1, 2, 3, 12].into_iter().zip(expected) {
            assert_eq!(
                monthly.boundary(anchor, k),
                Some(day + 5 * MILLIS_PER_HOUR),
                "k = {k}"
            );
        }
    }

    #[test]
    fn index_at_finds_the_containing_period() {
        for text in ["P1M", "PT10S", "P1Y", "P1MT1H", "P1W"] {
            let period = Period::parse(text).expect("valid");
            let anchor = instant(2023, 5, 31) + 1_234;
            for k in [0_u64, 1, 2, 7, 30, 100] {
                let start = period.boundary(anchor, k).expect("in range");
                let end = period.boundary(anchor, k + 1).expect("in range");
                assert_eq!(period.index_at(anchor, start), k, "{text} start of {k}");
                assert_eq!(period.index_at(anchor, end - 1), k, "{text} end of {k}");
                assert_eq!(period.index_at(anchor, end), k + 1, "{text} after {k}");
            }
            assert_eq!(period.index_at(anchor, anchor - 1), 0);
        }
    }
}

//! State-machine tables: each scenario is a log, one command per line with its time stamp first
//! and the expected outcome last (see `harness.rs` for the notation). The expectations are
//! worked out by hand from the semantics in DESIGN.md, never copied from the code's output.

mod harness;

use harness::run_table;
use ledger_core::Rejection;

/// Declares one test per table and the list of all tables (for the coverage check).
macro_rules! tables {
    ($($name:ident => $table:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run_table($table);
            }
        )*
        const ALL_TABLES: &[&str] = &[$($table),*];
    };
}

tables! {
    create_replay_and_conflict => "
        # time  command                              => expected
           10   create alice                         => account_created
           11   create alice                         => account_exists replayed
           12   create alice overdraft=0             => account_exists replayed
           13   create alice overdraft=5             => account_conflict
           14   view   alice                         => available=0 consumed=0 expired=0 overdraft=0 grants=-
           15   create bob overdraft=amount_max      => account_created
           15   create bob overdraft=amount_max      => account_exists replayed
           15   view   bob                           => available=0 overdraft=amount_max
           16   create carol overdraft=amount_max+1  => invalid_amount
           16   view   carol                         => none
           16   view   nobody                        => none
    ";

    identifiers => "
        # 1 to 128 bytes of [A-Za-z0-9._:-].
        10 create \"\"                 => invalid_identifier
        10 create a/b                  => invalid_identifier
        10 create café                 => invalid_identifier
        10 create x*129                => invalid_identifier
        10 create x*128                => account_created
        10 create A-z.0_9:ok           => account_created
        10 grant  x*128 \"\" 5         => invalid_identifier
        10 grant  x*128 g!1 5          => invalid_identifier
        10 grant  x*128 g*129 5        => invalid_identifier
        10 grant  x*128 g*128 5        => granted
        10 debit  x*128 k^1 5          => invalid_identifier
        10 debit  \"\" k1 5            => invalid_identifier
        10 debit  x*128 k*129 1        => invalid_identifier
        10 debit  x*128 k*128 1        => debited amount=1 available=4
        # Invalid keys are not recorded.
        10 record x*128 k^1            => none
        10 record x*128 k*128          => debited amount=1 available=4
    ";

    command_checks_come_before_state_checks => "
        # The order of precedence is the order of the Rejection variants.
        10 create a                                          => account_created
        11 grant  \"\" g1 0                                  => invalid_identifier
        11 grant  a g1 0 priority=101                        => invalid_amount
        11 grant  a g1 5 priority=101 effective=20 expires=10 => invalid_priority
        11 grant  missing g1 0                               => invalid_amount
        11 grant  missing g1 5 priority=101                  => invalid_priority
        11 grant  missing g1 5 effective=20 expires=20       => invalid_expiry
        11 grant  missing g1 5                               => account_not_found
        11 create a overdraft=amount_max+1                   => invalid_amount
        11 debit  \"\" k1 0                                  => invalid_identifier
        11 debit  missing k1 0                               => invalid_amount
        11 record missing k1                                 => none
    ";

    grant_amounts_and_priorities => "
        10 create a                                => account_created
        11 grant  a g0 0                           => invalid_amount
        11 grant  a big amount_max+1               => invalid_amount
        11 grant  a p101 5 priority=101            => invalid_priority
        11 grant  a p255 5 priority=255            => invalid_priority
        11 grant  a p100 5 priority=100            => granted
        11 grant  a p0 5 priority=0                => granted
        11 grant  a max amount_max                 => granted
        11 view   a                                => available=amount_max+10 grants=p0:5,max:amount_max,p100:5
    ";

    grant_expiry_rules => "
        # expires_at must be after effective_at and after the instant the grant is applied.
        10 create a                                  => account_created
        20 grant  a e1 5 effective=30 expires=30     => invalid_expiry
        20 grant  a e2 5 effective=30 expires=29     => invalid_expiry
        20 grant  a e3 5 expires=20                  => invalid_expiry
        20 grant  a e4 5 expires=19                  => invalid_expiry
        20 grant  a e5 5 effective=5 expires=15      => invalid_expiry
        20 grant  a e6 5 expires=21                  => granted
        20 grant  a e7 5 effective=5 expires=25      => granted
        20 view   a                                  => available=10 expired=0 grants=e6:5,e7:5
        21 view   a                                  => available=5 expired=5 grants=e7:5
        25 view   a                                  => available=0 expired=10 grants=-
        # A view asks, it does not apply: the ledger is still at 20.
        20 grant  a e8 5 expires=21                  => granted
        # Past expiries depend on time and are recorded; the others on the command alone.
        20 grant_record a e1                         => none
        20 grant_record a e5                         => invalid_expiry
        20 grant  a e5 5 effective=5 expires=15      => invalid_expiry replayed
    ";

    grant_replay_and_conflict => "
        10  create a                                                  => account_created
        10  grant  a g1 100 priority=10 source=promo expires=100      => granted
        11  grant  a g1 100 priority=10 source=promo expires=100      => granted replayed
        11  grant  a g1 101 priority=10 source=promo expires=100      => grant_conflict
        11  grant  a g1 100 priority=11 source=promo expires=100      => grant_conflict
        11  grant  a g1 100 priority=10 source=plan expires=100       => grant_conflict
        11  grant  a g1 100 priority=10 source=promo expires=101      => grant_conflict
        11  grant  a g1 100 priority=10 source=promo                  => grant_conflict
        11  grant  a g1 100 priority=10 source=promo effective=11 expires=100 => grant_conflict
        11  view   a                                                  => available=100 grants=g1:100
        # A late retry, after the grant expired, is still its replay (not invalid_expiry),
        # and a different grant under that id is still a conflict.
        150 grant  a g1 100 priority=10 source=promo expires=100      => granted replayed
        150 grant  a g1 100 priority=10 source=promo expires=120      => grant_conflict
        150 view   a                                                  => available=0 expired=100 grants=-
        # Grant ids are per account.
        150 create b                                                  => account_created
        150 grant  b g1 7                                             => granted
        150 view   b                                                  => available=7
    ";

    grant_without_effective_at_is_stamped => "
        10 create a                              => account_created
        10 grant  a now 50                       => granted
        20 grant  a now 50 effective=10          => granted replayed
        20 grant  a now 50                       => granted replayed
        20 grant  a now 50 effective=20          => grant_conflict
        10 grant  a later 100 effective=30       => granted
        30 grant  a later 100 effective=30       => granted replayed
        30 grant  a later 100                    => granted replayed
        30 grant  a later 100 effective=31       => grant_conflict
    ";

    grant_to_a_missing_account_is_recorded => "
        # The answer depends on state, so it is decided once: a retry after the account was
        # created is still rejected, and says it is a replay; the grant never applies.
        10 grant  ghost g1 5                   => account_not_found
        10 grant_record ghost g1               => account_not_found
        11 grant  ghost g1 5                   => account_not_found replayed
        11 grant  ghost g1 6                   => grant_conflict
        12 create ghost                        => account_created
        13 grant  ghost g1 5                   => account_not_found replayed
        # Decided without effective_at, at 10: naming 10 is the same request, as for a grant
        # that was accepted.
        13 grant  ghost g1 5 effective=10      => account_not_found replayed
        13 grant  ghost g1 5 effective=13      => grant_conflict
        13 grant  ghost g1 5 priority=10       => grant_conflict
        13 grant  ghost g1 5 source=promo      => grant_conflict
        13 grant  ghost g1 5 expires=100       => grant_conflict
        13 grant_record ghost g1               => account_not_found
        13 view   ghost                        => available=0 grants=-
        # Other grant ids are decided on their own, and grant ids are per account.
        13 grant  ghost g2 5                   => granted
        13 grant_record ghost g2               => none
        13 view   ghost                        => available=5 grants=g2:5
        14 grant  nobody g1 5                  => account_not_found
        14 grant_record nobody g1              => account_not_found
        14 grant  nobody g1 5                  => account_not_found replayed
    ";

    grant_checks_of_the_command_record_nothing => "
        # Their answer depends on the command alone: a retry fails the same way without a
        # record, and a corrected request may still use the grant id.
        10 create a                                     => account_created
        11 grant  a g1 0                                => invalid_amount
        11 grant  a g1 5 priority=101                   => invalid_priority
        11 grant  a g1 5 effective=30 expires=30        => invalid_expiry
        11 grant  missing g1 0                          => invalid_amount
        11 grant  missing g1 5 effective=30 expires=20  => invalid_expiry
        11 grant_record a g1                            => none
        11 grant_record missing g1                      => none
        12 grant  a g1 5                                => granted
        12 grant_record a g1                            => none
        12 view   a                                     => available=5 grants=g1:5
        12 grant  missing g1 5                          => account_not_found
        12 grant  missing g1 5                          => account_not_found replayed
    ";

    grant_with_an_expiry_already_past_is_recorded => "
        # Already past depends on time: the same request applied earlier would have been granted.
        10 create a                                     => account_created
        20 grant  a e1 5 expires=20                     => invalid_expiry
        20 grant_record a e1                            => invalid_expiry
        21 grant  a e1 5 expires=20                     => invalid_expiry replayed
        # Rejected once, rejected forever: a corrected expiry needs another grant id.
        21 grant  a e1 5 expires=30                     => grant_conflict
        21 grant  a e2 5 expires=30                     => granted
        21 grant  a e3 5 effective=5 expires=15         => invalid_expiry
        21 grant  a e3 5 effective=5 expires=15         => invalid_expiry replayed
        21 grant  a e3 5 expires=15                     => invalid_expiry replayed
        21 grant_record a e3                            => invalid_expiry
        21 view   a                                     => available=5 expired=0 grants=e2:5
    ";

    debit_replay_and_conflict => "
        10 create a              => account_created
        10 grant  a g1 100       => granted
        11 debit  a k1 30        => debited amount=30 available=70
        12 debit  a k1 30        => debited amount=30 available=70 replayed
        12 debit  a k1 31        => idempotency_conflict
        12 view   a              => available=70 consumed=30 grants=g1:70
        12 debit  a k2 71        => insufficient_credits
        13 grant  a g2 100       => granted
        # Told rejected once, rejected forever: the later grant changes nothing for k2.
        14 debit  a k2 71        => insufficient_credits replayed
        14 debit  a k2 70        => idempotency_conflict
        14 debit  a k3 71        => debited amount=71 available=99
        14 record a k1           => debited amount=30 available=70
        14 record a k2           => insufficient_credits
        14 record a k3           => debited amount=71 available=99
        14 record a nope         => none
        # Keys are per account.
        15 create b              => account_created
        15 debit  b k1 30        => insufficient_credits
        15 record b k1           => insufficient_credits
        15 record a k1           => debited amount=30 available=70
    ";

    debit_checks_of_the_command_record_nothing => "
        10 create a                  => account_created
        10 grant  a g1 100           => granted
        11 debit  a k1 0             => invalid_amount
        11 debit  a k1 amount_max+1  => invalid_amount
        11 record a k1               => none
        12 debit  a k1 5             => debited amount=5 available=95
        13 debit  a k1 0             => invalid_amount
        13 debit  a k1 5             => debited amount=5 available=95 replayed
    ";

    debit_of_a_missing_account_is_recorded => "
        10 debit  ghost k1 5     => account_not_found
        11 debit  ghost k1 5     => account_not_found replayed
        11 record ghost k1       => account_not_found
        12 create ghost          => account_created
        12 grant  ghost g1 100   => granted
        13 debit  ghost k1 5     => account_not_found replayed
        13 debit  ghost k1 6     => idempotency_conflict
        13 debit  ghost k2 5     => debited amount=5 available=95
    ";

    draw_down_by_priority => "
        10 create a                     => account_created
        10 grant  a low 100 priority=90 => granted
        10 grant  a high 100 priority=10 => granted
        10 grant  a mid 100 priority=50 => granted
        10 view   a                     => grants=high:100,mid:100,low:100
        11 debit  a k1 150              => debited amount=150 available=150
        11 view   a                     => grants=high:0,mid:50,low:100
    ";

    draw_down_by_earliest_expiry_then_none => "
        10 create a                                         => account_created
        10 grant  a never 100 priority=20                   => granted
        10 grant  a late 100 priority=20 expires=500        => granted
        10 grant  a soon 100 priority=20 expires=100        => granted
        10 grant  a urgent 100 priority=30 expires=50       => granted
        10 view   a                                         => grants=soon:100,late:100,never:100,urgent:100
        # Priority comes before expiry: `urgent` (priority 30) is drawn last.
        11 debit  a k1 250                                  => debited amount=250 available=150
        11 view   a                                         => grants=soon:0,late:0,never:50,urgent:100
    ";

    draw_down_by_creation_order => "
        10 create a             => account_created
        10 grant  a first 10    => granted
        10 grant  a second 10   => granted
        10 grant  a third 10    => granted
        11 debit  a k1 15       => debited amount=15 available=15
        11 view   a             => grants=first:0,second:5,third:10
        11 debit  a k2 6        => debited amount=6 available=9
        11 view   a             => grants=first:0,second:0,third:9
    ";

    expiry_exactly_at_the_timestamp => "
        # A grant is drawable in [effective_at, expires_at).
        10 create a                    => account_created
        10 grant  a g1 100 expires=50  => granted
        49 view   a                    => available=100 expired=0
        49 debit  a k1 10              => debited amount=10 available=90
        50 debit  a k2 10              => insufficient_credits
        50 view   a                    => available=0 consumed=10 expired=90 grants=-
        50 record a k2                 => insufficient_credits
    ";

    future_effective_grants => "
        10 create a                                  => account_created
        10 grant  a future 100 priority=0 effective=20 => granted
        10 grant  a now 100 priority=90              => granted
        10 view   a                                  => available=100 grants=future:100,now:100
        11 debit  a k1 101                           => insufficient_credits
        11 debit  a k2 10                            => debited amount=10 available=90
        19 view   a                                  => available=90
        20 view   a                                  => available=190
        # At its effective instant the lower priority number is drawn first.
        20 debit  a k3 10                            => debited amount=10 available=180
        20 view   a                                  => grants=future:90,now:90
    ";

    overdraft_and_overage_repayment => "
        10 create a overdraft=50   => account_created
        10 grant  a g1 100         => granted
        11 debit  a k1 130         => debited amount=130 available=-30
        12 debit  a k2 21          => insufficient_credits
        12 debit  a k3 20          => debited amount=20 available=-50
        12 view   a                => available=-50 consumed=150 grants=g1:0
        # Overage is repaid first by a later grant.
        13 grant  a g2 80          => granted
        13 view   a                => available=30 consumed=150 grants=g1:0,g2:30
        14 debit  a k4 80          => debited amount=80 available=-50
        14 grant  a g3 20          => granted
        14 view   a                => available=-30 grants=g1:0,g2:0,g3:0
    ";

    no_overdraft_means_no_negative_balance => "
        10 create a                => account_created
        10 debit  a k1 1           => insufficient_credits
        10 grant  a g1 10          => granted
        10 debit  a k2 11          => insufficient_credits
        10 debit  a k3 10          => debited amount=10 available=0
        10 debit  a k4 1           => insufficient_credits
    ";

    overage_is_repaid_when_a_future_grant_becomes_effective => "
        # Overage 10 from instant 10; `brief` is drawable in [30, 50), `lasting` from 40 on.
        10 create a overdraft=10                        => account_created
        10 debit  a k1 10                               => debited amount=10 available=-10
        10 grant  a brief 100 effective=30 expires=50   => granted
        10 grant  a lasting 100 effective=40            => granted
        29 view   a                                     => available=-10 expired=0 grants=brief:100,lasting:100
        30 view   a                                     => available=90 grants=brief:90,lasting:100
        45 view   a                                     => available=190 grants=brief:90,lasting:100
        60 view   a                                     => available=100 expired=90 grants=lasting:100
        # Nothing touched the account from 10 to 60: a debit at 60 sees what the view saw.
        60 debit  a k2 100                              => debited amount=100 available=0
        60 view   a                                     => consumed=110 expired=90 grants=lasting:0
    ";

    settlement_does_not_depend_on_when_the_account_is_touched => "
        # The previous table, with the account touched (a rejected debit) at 35 and 45.
        10 create a overdraft=10                        => account_created
        10 debit  a k1 10                               => debited amount=10 available=-10
        10 grant  a brief 100 effective=30 expires=50   => granted
        10 grant  a lasting 100 effective=40            => granted
        35 debit  a big 1000                            => insufficient_credits
        45 debit  a big2 1000                           => insufficient_credits
        60 view   a                                     => available=100 expired=90 grants=lasting:100
        60 debit  a k2 100                              => debited amount=100 available=0
        60 view   a                                     => consumed=110 expired=90 grants=lasting:0
    ";

    overage_repaid_in_draw_down_order_at_the_same_instant => "
        10 create a overdraft=100                  => account_created
        10 debit  a k1 100                         => debited amount=100 available=-100
        10 grant  a x 60 priority=60 effective=20  => granted
        10 grant  a y 60 priority=40 effective=20  => granted
        19 view   a                                => available=-100 grants=y:60,x:60
        20 view   a                                => available=20 grants=y:0,x:20
    ";

    backdated_grant_repays_only_from_now => "
        # A grant effective in the past cannot repay overage before it existed: it repays now.
        10 create a overdraft=10                        => account_created
        10 debit  a k1 10                               => debited amount=10 available=-10
        20 grant  a old 100 effective=0 expires=30      => granted
        20 view   a                                     => available=90 grants=old:90
        30 view   a                                     => available=0 expired=90 grants=-
    ";

    backdated_grant_does_not_rewrite_the_past => "
        # `brief` repaid the overage at 30, before `old` existed; `old` (back-dated to 0) is
        # added at 60 and cannot take its place.
        10 create a overdraft=10                        => account_created
        10 debit  a k1 10                               => debited amount=10 available=-10
        10 grant  a brief 100 effective=30 expires=50   => granted
        60 grant  a old 100 effective=0                 => granted
        60 view   a                                     => available=100 expired=90 grants=old:100
    ";

    time_never_goes_backwards => "
        100 create a                       => account_created
        100 grant  a g1 10 expires=150     => granted
        # Stamped 50 but applied at 100, the last applied stamp.
        50  grant  a g2 10 expires=90      => invalid_expiry
        50  grant  a g2 10 expires=90      => invalid_expiry replayed
        50  grant  a g3 10                 => granted
        50  grant  a g3 10 effective=100   => granted replayed
        50  grant  a g3 10 effective=50    => grant_conflict
        50  view   a                       => available=20
        160 debit  a k1 10                 => debited amount=10 available=0
        40  view   a                       => available=0 expired=10 grants=g3:0
        40  debit  a k2 1                  => insufficient_credits
    ";

    totals_are_bounded_by_i64 => "
        10 create a overdraft=amount_max                => account_created
        10 grant  a g1 amount_max                       => granted
        10 grant  a g2 amount_max                       => granted
        10 grant  a g3 amount_max                       => granted
        10 grant  a g4 amount_max                       => granted
        10 grant  a g5 amount_max                       => granted
        10 grant  a g6 amount_max                       => granted
        10 grant  a g7 amount_max                       => granted
        10 grant  a g8 amount_max                       => granted
        10 grant  a g9 amount_max                       => granted
        10 grant  a g10 amount_max                      => amount_overflow
        10 grant  a g10 amount_max                      => amount_overflow replayed
        10 grant_record a g10                           => amount_overflow
        # The rejection of g10 is decided: a smaller amount that fits needs another grant id.
        10 grant  a g10 223_372_036_854_775_807         => grant_conflict
        10 grant  a g11 223_372_036_854_775_807         => granted
        10 grant  a g12 1                               => amount_overflow
        10 view   a                                     => available=i64_max
        11 debit  a k1 amount_max                       => debited amount=amount_max available=i64_max-1_000_000_000_000_000_000
        11 debit  a k2 amount_max                       => debited amount=amount_max available=i64_max-2_000_000_000_000_000_000
        11 debit  a k3 amount_max                       => debited amount=amount_max available=i64_max-3_000_000_000_000_000_000
        11 debit  a k4 amount_max                       => debited amount=amount_max available=i64_max-4_000_000_000_000_000_000
        11 debit  a k5 amount_max                       => debited amount=amount_max available=i64_max-5_000_000_000_000_000_000
        11 debit  a k6 amount_max                       => debited amount=amount_max available=i64_max-6_000_000_000_000_000_000
        11 debit  a k7 amount_max                       => debited amount=amount_max available=i64_max-7_000_000_000_000_000_000
        11 debit  a k8 amount_max                       => debited amount=amount_max available=i64_max-8_000_000_000_000_000_000
        11 debit  a k9 amount_max                       => debited amount=amount_max available=i64_max-9_000_000_000_000_000_000
        11 debit  a k10 223_372_036_854_775_807         => debited amount=223_372_036_854_775_807 available=0
        # The overdraft would cover it, but `consumed` would pass i64::MAX.
        12 debit  a k11 1                               => amount_overflow
        12 debit  a k11 1                               => amount_overflow replayed
        12 view   a                                     => available=0 consumed=i64_max
    ";
}

/// Every rejection code is exercised by at least one table.
#[test]
fn every_rejection_code_is_covered() {
    for rejection in Rejection::ALL {
        let code = rejection.code();
        let covered = ALL_TABLES.iter().any(|table| {
            table.lines().any(|line| {
                line.split_once("=>").is_some_and(|(_, expected)| {
                    expected.split_whitespace().any(|word| word == code)
                })
            })
        });
        assert!(covered, "no table expects {code}");
    }
}

/// The codes and discriminants are stored in idempotency records and spoken by clients: they
/// never change.
#[test]
fn rejection_codes_and_discriminants_are_pinned() {
    let pinned = [
        (Rejection::InvalidIdentifier, 1, "invalid_identifier"),
        (Rejection::InvalidAmount, 2, "invalid_amount"),
        (Rejection::InvalidPriority, 3, "invalid_priority"),
        (Rejection::InvalidExpiry, 4, "invalid_expiry"),
        (Rejection::AccountNotFound, 5, "account_not_found"),
        (Rejection::AccountConflict, 6, "account_conflict"),
        (Rejection::GrantConflict, 7, "grant_conflict"),
        (Rejection::IdempotencyConflict, 8, "idempotency_conflict"),
        (Rejection::AmountOverflow, 9, "amount_overflow"),
        (Rejection::InsufficientCredits, 10, "insufficient_credits"),
    ];
    assert_eq!(Rejection::ALL.len(), pinned.len());
    for ((rejection, discriminant, code), listed) in pinned.into_iter().zip(Rejection::ALL) {
        assert_eq!(
            rejection, listed,
            "Rejection::ALL is in order of precedence"
        );
        assert_eq!(rejection as u16, discriminant);
        assert_eq!(rejection.code(), code);
        assert_eq!(Rejection::from_code(code), Some(rejection));
        assert!(!rejection.to_string().is_empty());
    }
    assert_eq!(Rejection::from_code("no_such_code"), None);
}

//! State-machine tables: each scenario is a log, one command per line with its time stamp first
//! and the expected outcome last (see `harness.rs` for the notation). The expectations are
//! worked out by hand from the semantics in DESIGN.md and the documentation of the commands,
//! never copied from the code's output. Every table also runs with eager settlement (a tick at
//! every due instant) and must give the same answers and end in the same state.

mod harness;

use harness::run_table;
use ledger_core::Rejection;

/// Declares one test per table and the list of all tables (for the coverage check).
macro_rules! tables {
    ($($(#[$attribute:meta])* $name:ident => $table:expr;)*) => {
        $(
            #[test]
            $(#[$attribute])*
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

    // ------------------------------------------------------------------ grants and the journal

    grant_sources_and_future_grants_in_the_balance => "
        # The running balance counts live grants, effective or not; available only the drawable.
        10 create a                                         => account_created
        10 grant  a plan-1 100 source=plan                  => granted
        10 grant  a bought 200 source=purchase priority=60  => granted
        10 grant  a welcome 50 source=promo priority=10 expires=1000 => granted
        10 grant  a later 70 source=seat effective=500      => granted
        10 grant  a fix 5 source=manual                     => granted
        10 view   a                                         => available=355 balance=425 granted=425 grants=welcome:50,plan-1:100,later:70,fix:5,bought:200
        10 grant_info a welcome                             => source=promo priority=10 effective=10 expires=1000 amount=50
        10 grant_info a later                               => source=seat effective=500 expires=none
        500 view  a                                         => available=425 balance=425
        500 statement a from=0 to=1000                      => granted=plan:100,purchase:200,promo:50,seat:70,manual:5 total=0 opening=0 closing=425
    ";

    expired_remainder_is_a_journal_entry => "
        10 create a                                   => account_created
        10 grant  a g1 100 source=promo expires=50    => granted
        20 debit  a k1 30                             => debited amount=30 available=70
        # Nothing touches the account at 50; the journal as of 60 has the expiry anyway.
        49 entries a                                  => grant:100:100 debit:30:70
        60 entries a                                  => grant:100:100/at=10/src=promo/ref=g1 debit:30:70/at=20/ref=k1/src=-/over=0 expire:70:0/at=50/src=promo/ref=g1/delta=-70
        60 view   a                                   => available=0 balance=0 expired=70 consumed=30 grants=-
        60 balance_at a at=9                          => 0
        60 balance_at a at=10                         => 100
        60 balance_at a at=49                         => 70
        60 balance_at a at=50                         => 0
        60 statement a from=0 to=100                  => opening=0 closing=0 granted=promo:100 total=30 expired=70 voided=0 overage=0
        60 statement a from=20 to=50                  => opening=100 closing=70 granted=- consumed=credits:30:1 expired=0
        # The persisted journal gets the entry when something settles the account.
        60 tick                                       => ticked settled=1
        60 tick                                       => ticked settled=0
    ";

    void_a_grant => "
        10 create a                                        => account_created
        10 grant  a promo 100 source=promo priority=10     => granted
        10 grant  a bought 200 source=purchase             => granted
        10 grant  a brief 50 expires=20                    => granted
        11 debit  a k1 30                                  => debited amount=30 available=320
        12 void   a promo                                  => voided voided=70
        12 void   a promo                                  => voided voided=70 replayed
        12 void   a nope                                   => grant_not_found
        12 void   ghost promo                              => account_not_found
        12 void   a bad/id                                 => invalid_identifier
        12 view   a                                        => available=250 balance=250 voided=70 consumed=30 granted=350 grants=brief:50,bought:200
        12 entries a                                       => grant:100:100 grant:200:300 grant:50:350 debit:30:320 void:70:250/src=promo/ref=promo
        # A debit draws nothing from a voided grant.
        13 debit  a k2 60                                  => debited amount=60 available=190
        13 view   a                                        => grants=brief:0,bought:190
        # Voiding what already expired voids nothing: the remainder was expired, not voided.
        30 grant  a brief2 40 expires=40                   => granted
        50 void   a brief2                                 => voided voided=0
        50 view   a                                        => expired=40 voided=70 balance=190
        50 statement a from=0 to=100                       => voided=70 expired=40 granted=purchase:200,promo:100,manual:90 total=90
    ";

    voided_grant_takes_back_what_its_holds_return => "
        10 create a                                => account_created
        10 grant  a g1 100                         => granted
        11 reserve a r1 60 ttl=1000                => reserved amount=60 expires=1011 available=40
        12 void   a g1                             => voided voided=40
        12 view   a                                => available=0 balance=0 reserved=60 voided=40 holds=r1:60 grants=-
        # The released credits come back to a voided grant: they are voided too.
        13 release a r1                            => released released=60 available=0
        13 view   a                                => available=0 balance=0 reserved=0 voided=100 holds=-
        13 entries a                               => grant:100:100 reserve:60:40 void:40:0 release:60:60 void:60:0/ref=g1
    ";

    // ------------------------------------------------------------------ rate card

    rate_card_versions_price_the_journal => "
        10 create a                                  => account_created
        10 grant  a g1 1000                          => granted
        # No rate card yet: every feature is unknown, and that answer is decided for the key.
        11 debit  a k0 feature=image qty=1           => unknown_feature
        12 rates  image=10,tokens=2                  => catalog_updated catalog=1 item=1
        12 debit  a k0 feature=image qty=1           => unknown_feature replayed
        13 debit  a k1 feature=image qty=3           => debited amount=30 available=970 version=1
        14 rates  image=12,tokens=2                  => catalog_updated catalog=2 item=2
        14 rates  image=12,tokens=2                  => catalog_updated catalog=2 item=2 replayed
        15 debit  a k2 feature=image qty=3           => debited amount=36 available=934 version=2
        # A retry of k1 is its first decision, priced with version 1.
        15 debit  a k1 feature=image qty=3           => debited amount=30 available=970 version=1 replayed
        15 debit  a k1 feature=image qty=4           => idempotency_conflict
        15 debit  a k1 feature=tokens qty=3          => idempotency_conflict
        15 debit  a k1 30                            => idempotency_conflict
        16 debit  a k3 feature=tokens qty=50         => debited amount=100 available=834 version=2
        17 debit  a k4 feature=video qty=1           => unknown_feature
        17 debit  a k5 5                             => debited amount=5 available=829
        17 debit  a k6 feature=image qty=0           => invalid_amount
        17 debit  a k6 feature=bad/name qty=1        => invalid_identifier
        17 record a k6                               => none
        17 entries a                                 => grant:1000:1000 debit:30:970/v=1/f=image/q=3 debit:36:934/v=2/f=image/q=3 debit:100:834/v=2/f=tokens/q=50 debit:5:829/v=-/f=-/q=-
        17 usage  a from=0 to=100                    => credits:5:1:0 image:66:2:6 tokens:100:1:50
        17 usage  a from=14 to=16                    => image:36:1
        17 usage  a from=100 to=200                  => -
        # A feature left out of the new card is unknown from then on.
        20 rates  tokens=2                           => catalog_updated catalog=3 item=3
        21 debit  a k7 feature=image qty=1           => unknown_feature
        # A price times a quantity above the largest amount.
        22 rates  image=amount_max                   => catalog_updated catalog=4 item=4
        22 debit  a k8 feature=image qty=2           => amount_overflow
        22 debit  a k8 feature=image qty=2           => amount_overflow replayed
        22 rates  image=amount_max+1                 => invalid_amount
        22 rates  bad/name=1                         => invalid_identifier
        22 statement a from=0 to=100                 => total=171 consumed=credits:5:1,image:66:2,tokens:100:1 granted=manual:1000
    ";

    catalog_plans_and_webhook_versions => "
        10 plan   basic credits=100 period=P1M       => catalog_updated catalog=1 item=1
        10 plan   basic credits=100 period=P1M       => catalog_updated catalog=1 item=1 replayed
        11 plan   basic credits=120 period=P1M       => catalog_updated catalog=2 item=2
        11 plan   pro credits=500 period=P1Y         => catalog_updated catalog=3 item=1
        12 webhook https://billing.example/hook s3cret => catalog_updated catalog=4 item=4
        12 webhook https://billing.example/hook s3cret => catalog_updated catalog=4 item=4 replayed
        13 webhook -                                 => catalog_updated catalog=5 item=5
        13 plan   bad credits=1 period=PT0.5S        => invalid_period
        13 plan   bad credits=1 period=PT0S          => invalid_period
        13 plan   bad/id credits=1 period=P1M        => invalid_identifier
        13 plan   big credits=amount_max+1 period=P1M => invalid_amount
        13 plan   big credits=1 period=P1M rollover=amount_max+1 => invalid_amount
        13 rates  image=1                            => catalog_updated catalog=6 item=1
    ";

    // ------------------------------------------------------------------ plans and periods

    plan_with_a_period_of_seconds => "
        1000  plan      basic credits=100 period=PT10S       => catalog_updated catalog=1 item=1
        1000  create    a                                    => account_created
        1000  subscribe a nope                               => plan_not_found
        1000  subscribe a basic seats=0                      => invalid_seats
        1000  subscribe a basic seats=1_000_001              => invalid_seats
        1000  subscribe ghost basic                          => account_not_found
        1000  subscribe a basic                              => updated
        1000  subscribe a basic                              => updated replayed
        1000  view      a                                    => available=100 plan=basic seats=1 period=0 next_reset=11000 grants=~1~basic~0:100
        1000  grant_info a ~1~basic~0                        => source=plan amount=100 effective=1000 expires=11000
        2000  debit     a k1 30                              => debited amount=30 available=70
        10999 view      a                                    => available=70 period=0 expired=0
        # At 11000 the period ends: the 70 unused expire (no rollover), the next 100 come.
        11000 view      a                                    => available=100 expired=70 period=1 next_reset=21000 grants=~1~basic~1:100
        11000 entries   a                                    => grant:100:100/src=plan/ref=~1~basic~0 debit:30:70 expire:70:0/at=11000/src=plan grant:100:100/at=11000/ref=~1~basic~1
        # Untouched for three periods: each reset happened at its instant.
        35000 view      a                                    => available=100 expired=270 period=3 next_reset=41000 grants=~1~basic~3:100
        35000 balance_at a at=30999                          => 100
        35000 statement a from=11000 to=31000                => opening=70 closing=100 granted=plan:200 expired=170 total=0
        35000 events    a                                    => allowance_reset/index=0/start=1000/end=11000/granted=100/rolled=0/plan=basic
        35000 due                                            => 11000
        35000 tick                                           => ticked settled=1
        35000 events    a after=1                            => allowance_reset/index=1/at=11000/start=11000/end=21000 allowance_reset/index=2/at=21000 allowance_reset/index=3/at=31000/end=41000
        35000 due                                            => 41000
    ";

    monthly_plan_clamps_to_the_end_of_february => "
        # Anchored on January 31st: February has 29 days in 2024, and the period comes back to
        # the 31st in March.
        2024-01-31T05:00:00 plan      pro credits=1000 period=P1M  => catalog_updated catalog=1 item=1
        2024-01-31T05:00:00 create    a                            => account_created
        2024-01-31T05:00:00 subscribe a pro                        => updated
        2024-01-31T05:00:00 view      a                            => next_reset=2024-02-29T05:00:00 grants=~1~pro~0:1000
        2024-02-29T04:59:59 view      a                            => period=0 available=1000 expired=0
        2024-02-29T05:00:00 view      a                            => period=1 next_reset=2024-03-31T05:00:00 expired=1000 grants=~1~pro~1:1000
        2024-04-01          view      a                            => period=2 next_reset=2024-04-30T05:00:00 grants=~1~pro~2:1000
        2024-05-01          tick                                   => ticked settled=1
        2024-05-01          events    a                            => allowance_reset/start=2024-01-31T05:00:00/end=2024-02-29T05:00:00 allowance_reset/start=2024-02-29T05:00:00/end=2024-03-31T05:00:00 allowance_reset/start=2024-03-31T05:00:00/end=2024-04-30T05:00:00 allowance_reset/start=2024-04-30T05:00:00/end=2024-05-31T05:00:00
    ";

    per_seat_plan_seat_changes_and_rollover_cap => "
        10000 plan      team credits=100 period=PT10S per_seat rollover=50 => catalog_updated catalog=1 item=1
        10000 create    a                              => account_created
        10000 subscribe a team seats=3                 => updated
        10000 view      a                              => available=300 seats=3 grants=~1~team~0:300
        10000 grant_info a ~1~team~0                   => source=seat amount=300 expires=20000
        # Two more seats with three quarters of the period left: 2 x 100 x 7500 / 10000 = 150.
        12500 subscribe a team seats=5                 => updated
        12500 view      a                              => available=450 seats=5 grants=~1~team~0:300,~1~team~0~seats~1:150
        12500 grant_info a ~1~team~0~seats~1           => source=seat amount=150 effective=12500 expires=20000
        # One more with 6667 ms of 10000 left: 66.67, rounded down.
        13333 subscribe a team seats=6                 => updated
        13333 view      a                              => available=516 grants=~1~team~0:300,~1~team~0~seats~1:150,~1~team~0~seats~2:66
        15000 debit     a k1 400                       => debited amount=400 available=116
        # Fewer seats: nothing is taken back now; the next period is granted for 2 seats.
        16000 subscribe a team seats=2                 => updated
        16000 view      a                              => available=116 seats=2 expired=0
        # At 20000: 116 unused, 50 roll over (the cap), all 116 expire, then 2 x 100 and the 50.
        20000 view      a                              => available=250 expired=116 seats=2 period=1 grants=~1~team~1:200,~1~team~1~rollover:50
        20000 entries   a after=4                      => expire:50:66/ref=~1~team~0~seats~1 expire:66:0/ref=~1~team~0~seats~2 grant:200:200/src=seat/ref=~1~team~1 grant:50:250/src=plan/ref=~1~team~1~rollover
        20000 grant_info a ~1~team~1~rollover          => expires=30000 effective=20000
        # The rollover rolls over again, capped: 250 unused at 30000, 50 carried.
        25000 debit     a k2 10                        => debited amount=10 available=240
        30000 view      a                              => available=250 expired=356 period=2 grants=~1~team~2:200,~1~team~2~rollover:50
        30000 tick                                     => ticked settled=1
        30000 events    a                              => allowance_reset/index=0/granted=300/rolled=0 allowance_reset/index=1/granted=200/rolled=50 allowance_reset/index=2/granted=200/rolled=50
    ";

    plan_switch_and_plan_change => "
        10000 plan      basic credits=100 period=PT10S   => catalog_updated catalog=1 item=1
        10000 plan      pro credits=500 period=PT20S     => catalog_updated catalog=2 item=1
        10000 create    a                                => account_created
        10000 grant     a topup 50 source=purchase       => granted
        10000 subscribe a basic                          => updated
        12000 debit     a k1 40                          => debited amount=40 available=110
        # Switching expires what is left of the allowance now and starts the new plan's first
        # period now; the top-up stays.
        15000 subscribe a pro                            => updated
        15000 view      a                                => plan=pro period=0 next_reset=35000 available=550 expired=60 grants=~2~pro~0:500,topup:50
        15000 entries   a                                => grant:50:50 grant:100:150/ref=~1~basic~0 debit:40:110 expire:60:50/at=15000/ref=~1~basic~0 grant:500:550/ref=~2~pro~0
        # A change of the plan's terms applies from the next period on.
        20000 plan      pro credits=800 period=PT20S     => catalog_updated catalog=3 item=2
        20000 view      a                                => available=550
        35000 view      a                                => available=850 expired=560 period=1 grants=~2~pro~1:800,topup:50
    ";

    plan_change_after_an_untouched_reset => "
        # The resets before a change of terms keep the old terms, however late the account is
        # touched.
        10000 plan      basic credits=100 period=PT10S   => catalog_updated catalog=1 item=1
        10000 create    a                                => account_created
        10000 subscribe a basic                          => updated
        25000 plan      basic credits=150 period=PT10S   => catalog_updated catalog=2 item=2
        25000 view      a                                => period=1 grants=~1~basic~1:100
        30000 view      a                                => period=2 grants=~1~basic~2:150
    ";

    unsubscribe_keeps_the_allowance_to_the_end_of_its_period => "
        10000 plan        basic credits=100 period=PT10S => catalog_updated catalog=1 item=1
        10000 create      a                              => account_created
        10000 subscribe   a basic                        => updated
        12000 unsubscribe a                              => updated
        12000 unsubscribe a                              => updated replayed
        12000 unsubscribe ghost                          => account_not_found
        12000 view        a                              => plan=- available=100
        20000 view        a                              => available=0 expired=100 grants=-
        # Subscribing again starts a new subscription, with ids of its own.
        21000 subscribe   a basic                        => updated
        21000 view        a                              => plan=basic period=0 next_reset=31000 grants=~2~basic~0:100
    ";

    hybrid_plan_and_purchased_top_up => "
        10000 plan      basic credits=100 period=PT10S   => catalog_updated catalog=1 item=1
        10000 create    a                                => account_created
        10000 subscribe a basic                          => updated
        10000 grant     a topup 500 source=purchase      => granted
        # Same priority: the allowance expires first, so it is drawn first.
        11000 debit     a k1 150                         => debited amount=150 available=450
        11000 view      a                                => grants=~1~basic~0:0,topup:450
        # Nothing of the allowance is left to expire at the reset; the top-up stays.
        20000 view      a                                => available=550 expired=0 grants=~1~basic~1:100,topup:450
        20000 entries   a                                => grant:100:100 grant:500:600 debit:150:450 grant:100:550/at=20000
        20000 statement a from=10000 to=20001            => granted=plan:200,purchase:500 total=150 expired=0 opening=0 closing=550
    ";

    pay_as_you_go_with_overage => "
        10 create a overdraft=1000                   => account_created
        10 rates  tokens=1                           => catalog_updated catalog=1 item=1
        11 debit  a k1 feature=tokens qty=300        => debited amount=300 available=-300 version=1
        12 debit  a k2 feature=tokens qty=701        => insufficient_credits
        12 debit  a k3 700                           => debited amount=700 available=-1000
        12 view   a                                  => overage=1000 balance=-1000 consumed=1000 available=-1000 granted=0
        12 entries a                                 => debit:300:-300/over=300 debit:700:-1000/over=700
        13 statement a from=0 to=100                 => overage=1000 total=1000 opening=0 closing=-1000 repaid=0
        # The overdraft cannot drop below what is owed; the same limit again is a replay.
        14 patch  a overdraft=999                    => overdraft_in_use
        14 patch  a overdraft=1000                   => updated replayed
        14 patch  a                                  => updated replayed
        14 patch  ghost overdraft=5                  => account_not_found
        14 patch  a overdraft=amount_max+1           => invalid_amount
        # Paying the bill: a purchase grant repays the overage first.
        20 grant  a invoice-1 1000 source=purchase   => granted
        20 view   a                                  => overage=0 available=0 balance=0 grants=invoice-1:0
        20 entries a after=2                         => grant:1000:0 overage_repaid:1000:0/ref=invoice-1/src=purchase/delta=0
        20 statement a from=0 to=100                 => overage=1000 repaid=1000 granted=purchase:1000 closing=0
        21 patch  a overdraft=0                      => updated
        21 view   a                                  => overdraft=0
        21 debit  a k4 1                             => insufficient_credits
        # The account was created with 1000: a retry of its creation is still a replay.
        21 create a overdraft=1000                   => account_exists replayed
    ";

    // ------------------------------------------------------------------ reservations

    reservation_commit_less_more_and_release => "
        10 create  a                               => account_created
        10 grant   a g1 100                        => granted
        11 reserve a r1 60 ttl=1000                => reserved amount=60 expires=1011 available=40
        11 reserve a r1 60 ttl=1000                => reserved amount=60 expires=1011 available=40 replayed
        11 reserve a r1 61 ttl=1000                => reservation_conflict
        11 reserve a r1 60 ttl=999                 => reservation_conflict
        11 view    a                               => available=40 balance=40 reserved=60 holds=r1:60 grants=g1:40
        11 reservation a r1                        => active
        12 reserve a r2 41 ttl=1000                => insufficient_credits
        12 reserve a r2 41 ttl=1000                => insufficient_credits replayed
        12 reservation a r2                        => rejected
        12 commit  a r2 5                          => reservation_not_found
        12 release a r2                            => reservation_not_found
        # Commit less than held: the rest is released.
        13 commit  a r1 45                         => committed amount=45 released=15 available=55
        13 commit  a r1 45                         => committed amount=45 released=15 available=55 replayed
        13 commit  a r1 46                         => reservation_committed
        13 release a r1                            => reservation_committed
        13 reservation a r1                        => committed
        13 view    a                               => available=55 reserved=0 consumed=45 holds=- grants=g1:55
        13 entries a                               => grant:100:100 reserve:60:40/ref=r1 commit:45:40/delta=0/ref=r1 release:15:55/ref=r1
        # Commit more than held, with credits for the extra.
        14 reserve a r3 20 ttl=1000                => reserved amount=20 expires=1014 available=35
        15 commit  a r3 30                         => committed amount=30 released=0 available=25
        15 entries a after=4                       => reserve:20:35 commit:30:25/delta=-10
        # Commit more than held, without credits for the extra: rejected, and decided.
        16 reserve a r4 20 ttl=1000                => reserved amount=20 expires=1016 available=5
        17 commit  a r4 26                         => insufficient_credits
        17 commit  a r4 26                         => insufficient_credits replayed
        17 view    a                               => available=5 reserved=20 holds=r4:20
        # Another amount is another request, decided on its own.
        17 commit  a r4 25                         => committed amount=25 released=0 available=0
        17 commit  a r4 26                         => insufficient_credits replayed
        17 commit  a r4 25                         => committed amount=25 released=0 available=0 replayed
        # Release gives everything back; again is a replay.
        20 grant   a g2 100                        => granted
        21 reserve a r6 30 ttl=100                 => reserved amount=30 expires=121 available=70
        22 release a r6                            => released released=30 available=100
        22 release a r6                            => released released=30 available=100 replayed
        22 commit  a r6 10                         => reservation_released
        22 reservation a r6                        => released
        22 release a nope                          => reservation_not_found
        22 commit  a nope 5                        => reservation_not_found
        22 view    a                               => available=100 reserved=0 consumed=100 granted=200 balance=100
    ";

    reservation_checks_of_the_command => "
        10 create  a                               => account_created
        10 grant   a g1 100                        => granted
        11 reserve a r1 0 ttl=10                   => invalid_amount
        11 reserve a r1 amount_max+1 ttl=10        => invalid_amount
        11 reserve a r1 1 ttl=0                    => invalid_ttl
        11 reserve a r1 1 ttl=86_400_001           => invalid_ttl
        11 reserve a bad/id 1 ttl=10               => invalid_identifier
        11 reservation a r1                        => none
        11 reserve a r1 1 ttl=86_400_000           => reserved amount=1 expires=86_400_011 available=99
        11 reserve ghost r1 5 ttl=10               => account_not_found
        11 reserve ghost r1 5 ttl=10               => account_not_found replayed
        12 create  ghost                           => account_created
        12 reserve ghost r1 5 ttl=10               => account_not_found replayed
        12 commit  ghost r1 5                      => reservation_not_found
        12 commit  a r1 feature=image qty=0        => invalid_amount
    ";

    commit_priced_by_the_rate_card_and_commit_of_nothing => "
        10 create  a                                => account_created
        10 grant   a g1 100                         => granted
        10 rates   image=10                         => catalog_updated catalog=1 item=1
        11 reserve a r1 50 ttl=1000                 => reserved amount=50 expires=1011 available=50
        12 commit  a r1 feature=video qty=1         => unknown_feature
        12 commit  a r1 feature=video qty=1         => unknown_feature replayed
        13 rates   image=10,video=1                 => catalog_updated catalog=2 item=2
        # Told rejected once, rejected forever, although video is priced now.
        13 commit  a r1 feature=video qty=1         => unknown_feature replayed
        14 commit  a r1 feature=image qty=3         => committed amount=30 released=20 available=70 version=2
        14 commit  a r1 feature=image qty=3         => committed amount=30 released=20 available=70 version=2 replayed
        14 commit  a r1 30                          => reservation_committed
        14 entries a                                => grant:100:100 reserve:50:50 commit:30:50/f=image/q=3/v=2 release:20:70
        # Nothing used (a cancelled call): the whole hold comes back.
        15 reserve a r2 40 ttl=1000                 => reserved amount=40 expires=1015 available=30
        16 commit  a r2 0                           => committed amount=0 released=40 available=70
        16 usage   a from=0 to=100                  => credits:0:1 image:30:1
        16 view    a                                => consumed=30 available=70
    ";

    hold_beyond_the_grants_is_overage => "
        10 create  a overdraft=50                   => account_created
        10 grant   a g1 100                         => granted
        11 reserve a r1 130 ttl=1000                => reserved amount=130 expires=1011 available=-30
        11 view    a                                => overage=30 reserved=130 balance=-30 available=-30
        11 reserve a r2 21 ttl=1000                 => insufficient_credits
        # The grant part is consumed first, so only 10 of the overage part is billed.
        12 commit  a r1 110                         => committed amount=110 released=20 available=-10
        12 view    a                                => overage=10 consumed=110 reserved=0 balance=-10
        12 entries a                                => grant:100:100 reserve:130:-30/over=30 commit:110:-30/over=10/delta=0 release:20:-10
        12 statement a from=0 to=100                => overage=10 total=110
        # A later grant repays the overage first.
        13 grant   a g2 15                          => granted
        13 view    a                                => overage=0 available=5 grants=g1:0,g2:5
    ";

    reservation_time_to_live_decided_lazily => "
        10  create  a                              => account_created
        10  grant   a g1 100                       => granted
        11  reserve a r1 60 ttl=100                => reserved amount=60 expires=111 available=40
        110 view    a                              => reserved=60 available=40
        111 view    a                              => reserved=0 available=100 holds=- balance=100
        111 entries a                              => grant:100:100 reserve:60:40 release:60:100/at=111/ref=r1
        # Nothing settled the account: the record still says active, and the due index knows.
        111 reservation a r1                       => active
        111 due                                    => 111
        # The commit finds it timed out when it settles the account.
        150 commit  a r1 50                        => reservation_expired
        150 reservation a r1                       => expired
        150 due                                    => none
        150 commit  a r1 50                        => reservation_expired
        150 release a r1                           => released released=60 available=100 expired replayed
        150 view    a                              => available=100 consumed=0 reserved=0
        150 entries a                              => grant:100:100 reserve:60:40 release:60:100/at=111
    ";

    reservation_time_to_live_by_tick => "
        10  create  a                              => account_created
        10  grant   a g1 100                       => granted
        11  reserve a r1 60 ttl=100                => reserved amount=60 expires=111 available=40
        111 tick                                   => ticked settled=1
        111 reservation a r1                       => expired
        111 due                                    => none
        150 commit  a r1 50                        => reservation_expired
        150 release a r1                           => released released=60 available=100 expired replayed
        150 entries a                              => grant:100:100 reserve:60:40 release:60:100/at=111
        # Just before its time to live a hold can still be committed.
        200 reserve a r2 10 ttl=50                 => reserved amount=10 expires=250 available=90
        249 commit  a r2 10                        => committed amount=10 released=0 available=90
    ";

    timed_out_holds_are_released_in_the_order_they_were_made => "
        # Two holds time out at the same instant. Each is released as a release command would
        # be, the first made first, and what it gives back repays overage at once: r1 gives 10
        # back to `late`, which repays all the overage before r2 gives 5 back to `early`.
        10  create  a overdraft=10                   => account_created
        10  grant   a late 10 priority=90            => granted
        11  reserve a r1 10 ttl=100                  => reserved amount=10 expires=111 available=0
        11  grant   a early 5 priority=0             => granted
        11  reserve a r2 5 ttl=100                   => reserved amount=5 expires=111 available=0
        12  debit   a k1 10                          => debited amount=10 available=-10
        111 view    a                                => overage=0 available=5 reserved=0 grants=early:5,late:0
        111 entries a after=5                        => release:10:0/ref=r1 overage_repaid:10:0/ref=late release:5:5/ref=r2
    ";

    // ------------------------------------------------------------------ spend limits

    spend_limit_soft_and_hard => "
        1000  create a                                                   => account_created
        1000  grant  a g1 1000                                           => granted
        1000  limit  a scope=customer period=PT10S soft=50 hard=100      => updated
        1000  limit  a scope=customer period=PT10S soft=50 hard=100      => updated replayed
        1000  limit  a scope=customer period=PT10S soft=101 hard=100     => invalid_settings
        1000  limit  a scope=customer period=PT10S                       => invalid_settings
        1000  limit  a scope=customer period=PT0S hard=5                 => invalid_period
        1000  limit  a scope=customer period=PT10S hard=amount_max+1     => invalid_settings
        1000  limit  ghost scope=customer period=PT10S hard=5            => account_not_found
        1000  view   a                                                   => spent=customer:0
        2000  debit  a k1 40                                             => debited amount=40 available=960
        3000  debit  a k2 20                                             => debited amount=20 available=940
        3000  events a                                                   => soft_limit_reached/scope=customer/spent=60/limit=50/start=0/at=3000
        4000  debit  a k3 41                                             => spend_limit_exceeded
        4000  debit  a k3 41                                             => spend_limit_exceeded replayed
        4000  record a k3                                                => spend_limit_exceeded
        4000  debit  a k4 40                                             => debited amount=40 available=900
        4000  view   a                                                   => spent=customer:100
        5000  debit  a k5 1                                              => spend_limit_exceeded
        5000  events a                                                   => soft_limit_reached hard_limit_reached/spent=60/limit=100/at=4000
        # The next window: held credits count as spent, since they may be committed in it.
        10000 view    a                                                  => spent=customer:0
        10000 reserve a r1 70 ttl=5000                                   => reserved amount=70 expires=15000 available=830
        10000 debit   a k6 31                                            => spend_limit_exceeded
        10000 debit   a k7 30                                            => debited amount=30 available=800
        10000 commit  a r1 70                                            => committed amount=70 released=0 available=800
        10000 view    a                                                  => spent=customer:100 consumed=200
        10000 events  a after=2                                          => hard_limit_reached/spent=0/start=10000 soft_limit_reached/spent=100/start=10000
        # A commit beyond its hold is checked for the extra.
        20000 reserve a r2 50 ttl=1000                                   => reserved amount=50 expires=21000 available=750
        20001 commit  a r2 101                                           => spend_limit_exceeded
        20001 commit  a r2 100                                           => committed amount=100 released=0 available=700
        20001 view    a                                                  => spent=customer:100
        # A reservation beyond the limit is refused like a debit.
        30000 reserve a r3 101 ttl=1000                                  => spend_limit_exceeded
        30000 reserve a r3 101 ttl=1000                                  => spend_limit_exceeded replayed
    ";

    spend_limits_of_both_scopes_are_enforced => "
        1000  create a                                                   => account_created
        1000  grant  a g1 1000                                           => granted
        1000  limit  a scope=customer period=PT10S hard=100              => updated
        1000  limit  a scope=platform period=PT1H soft=10 hard=80        => updated
        1001  debit  a k1 81                                             => spend_limit_exceeded
        1001  debit  a k2 80                                             => debited amount=80 available=920
        1001  view   a                                                   => spent=platform:80,customer:80
        # The customer's window rolls at 10000, the platform's hour goes on.
        10000 debit  a k3 1                                              => spend_limit_exceeded
        10000 view   a                                                   => spent=platform:80,customer:0
        10000 limit  a scope=platform                                    => updated
        10000 limit  a scope=platform                                    => updated replayed
        10000 debit  a k4 100                                            => debited amount=100 available=820
        10000 view   a                                                   => spent=customer:100
        10000 events a                                                   => hard_limit_reached/scope=platform/spent=0/limit=80/start=0 soft_limit_reached/scope=platform/spent=80/limit=10 hard_limit_reached/scope=customer/spent=100/start=10000
    ";

    spend_limit_set_mid_window_counts_the_window_so_far => "
        9000  create a                                                   => account_created
        9000  grant  a g1 1000                                           => granted
        9000  debit  a k0 500                                            => debited amount=500 available=500
        12000 debit  a k1 60                                             => debited amount=60 available=440
        13000 limit  a scope=customer period=PT10S soft=50 hard=100      => updated
        13000 view   a                                                   => spent=customer:60
        13000 events a                                                   => soft_limit_reached/spent=60/start=10000/at=13000
        13000 debit  a k2 41                                             => spend_limit_exceeded
        13000 debit  a k3 40                                             => debited amount=40 available=400
    ";

    spend_limit_windows_are_calendar_days_and_months => "
        2024-03-01T12:00:00 create a                                     => account_created
        2024-03-01T12:00:00 grant  a g1 10_000                           => granted
        2024-03-01T12:00:00 limit  a scope=customer period=P1D hard=100  => updated
        2024-03-01T23:59:59 debit  a k1 100                              => debited amount=100 available=9900
        2024-03-01T23:59:59 debit  a k2 1                                => spend_limit_exceeded
        2024-03-02          debit  a k3 100                              => debited amount=100 available=9800
        2024-03-02          view   a                                     => spent=customer:100
        2024-03-02          events a                                     => hard_limit_reached/start=2024-03-01/spent=100/limit=100 hard_limit_reached/start=2024-03-02/spent=100
        # A monthly window is the calendar month; set now, it counts what March consumed.
        2024-03-02          limit  a scope=platform period=P1M soft=150  => updated
        2024-03-02          view   a                                     => spent=platform:200,customer:100
        2024-03-02          events a after=2                             => soft_limit_reached/scope=platform/start=2024-03-01/spent=200/limit=150
        2024-04-01          view   a                                     => spent=platform:0,customer:0
    ";

    // ------------------------------------------------------------------ alerts and events

    low_balance_and_auto_top_up_once_per_crossing => "
        10 create a                                          => account_created
        10 grant  a g1 200                                   => granted
        10 alerts a low=100,10 topup=50                      => updated
        10 alerts a low=10,100 topup=50                      => updated replayed
        10 alerts a low=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17 => invalid_settings
        10 alerts a low=amount_max+1                         => invalid_settings
        10 alerts a expiring=0                               => invalid_settings
        10 alerts ghost low=1                                => account_not_found
        10 events                                            => -
        11 debit  a k1 90                                    => debited amount=90 available=110
        11 events                                            => -
        12 debit  a k2 20                                    => debited amount=20 available=90
        12 events a                                          => low_balance/threshold=100/available=90/at=12
        13 debit  a k3 10                                    => debited amount=10 available=80
        14 debit  a k4 35                                    => debited amount=35 available=45
        15 debit  a k5 40                                    => debited amount=40 available=5
        15 events a after=1                                  => auto_top_up_wanted/threshold=50/available=45/at=14 low_balance/threshold=10/available=5/at=15
        # A top-up back above every threshold re-arms them all.
        16 grant  a topup 500 source=purchase                => granted
        16 events a after=3                                  => -
        17 debit  a k6 410                                   => debited amount=410 available=95
        17 events a after=3                                  => low_balance/threshold=100/available=95
        # One change crossing several: each fires, the low-balance thresholds first.
        18 debit  a k7 90                                    => debited amount=90 available=5
        18 events a after=4                                  => low_balance/threshold=10/available=5 auto_top_up_wanted/threshold=50/available=5
        # A threshold set while the balance is already below it fires at once.
        20 alerts a low=1000                                 => updated
        20 events a after=6                                  => low_balance/threshold=1000/available=5/at=20
    ";

    grant_expiring_alert => "
        10   create a                                        => account_created
        10   grant  a g1 100 expires=1000                    => granted
        10   grant  a g2 50 expires=2000                     => granted
        10   grant  a g3 10                                  => granted
        10   alerts a expiring=300                           => updated
        10   due                                             => 700
        699  tick                                            => ticked settled=0
        700  tick                                            => ticked settled=1
        700  events a                                        => grant_expiring/grant=g1/expires=1000/remaining=100/at=700
        # An exhausted grant is not warned about; it is still due at its expiry (credits a hold
        # took from it would come back to it and must expire with it).
        800  debit  a k1 150                                 => debited amount=150 available=10
        800  due                                             => 1000
        3000 tick                                            => ticked settled=1
        3000 events a                                        => grant_expiring/grant=g1
        # A grant already inside the warning window is warned at the next settlement.
        3000 grant  a g4 20 expires=3100                     => granted
        3000 due                                             => 2800
        3000 tick                                            => ticked settled=1
        3000 events a after=1                                => grant_expiring/grant=g4/remaining=20/at=3000
        3100 view   a                                        => expired=20 available=10
    ";

    events_acknowledged => "
        10 create a                                          => account_created
        10 alerts a low=10                                   => updated
        10 create b                                          => account_created
        10 alerts b low=5                                    => updated
        10 events                                            => low_balance/account=a/threshold=10/available=0 low_balance/account=b/threshold=5
        10 events after=1                                    => low_balance/account=b
        10 acknowledged                                      => 0
        10 ack 1                                             => updated
        10 ack 1                                             => updated replayed
        10 ack 0                                             => updated replayed
        10 acknowledged                                      => 1
        # Beyond the last event: acknowledged up to the last one.
        10 ack 9                                             => updated
        10 acknowledged                                      => 2
        10 ack 9                                             => updated replayed
    ";

    // ------------------------------------------------------------------ regressions
    // Each table below failed against an earlier core (found by the property tests); they pin
    // the fixed behavior.

    /// A grant exhausted before its expiry still expires (an earlier core skipped grants with
    /// nothing left, listed them as live after their expiry and kept credits a hold gave back
    /// to them in the balance).
    expired_grant_takes_back_what_its_holds_return => "
        10 create a                                => account_created
        10 grant  a g1 100 expires=50              => granted
        10 grant  a g2 100                         => granted
        11 reserve a r1 120 ttl=1000               => reserved amount=120 expires=1011 available=80
        60 view   a                                => available=80 expired=0 reserved=120 grants=g2:80
        # Committing 30 of the hold at 60: g1's part (100) is used first, and its 70 left over
        # go back to g1, which expired at 50: they expire now; g2's part (20) comes back to it.
        60 commit a r1 30                          => committed amount=30 released=90 available=100
        60 view   a                                => available=100 expired=70 consumed=30 reserved=0 grants=g2:100
        60 entries a                               => grant:100:100 grant:100:200 reserve:120:80 commit:30:80/delta=0 release:90:170 expire:70:100/at=60/ref=g1
    ";

    /// A repeated void reports what the first void voided, not the held credits voided later
    /// when they came back.
    void_replay_answers_what_the_first_void_voided => "
        10 create  a                                => account_created
        10 grant   a g1 100                         => granted
        11 reserve a r1 60 ttl=1000                 => reserved amount=60 expires=1011 available=40
        12 void    a g1                             => voided voided=40
        13 release a r1                             => released released=60 available=0
        14 void    a g1                             => voided voided=40 replayed
    ";

    /// Changing the period of a plan with subscribers applies from the next period on, counted
    /// from that reset: from PT2S to PT1S, period 1 is [3000, 4000) and period 2 [4000, 5000).
    /// (An earlier core computed the new period's end from the old anchor: the period starting
    /// at 3000 ended at 3000 again and the settlement's assertion stopped the replica.)
    plan_period_change_applies_from_the_next_period => "
        1000 plan      basic credits=10 period=PT2S    => catalog_updated catalog=1 item=1
        1000 create    a                               => account_created
        1000 subscribe a basic                         => updated
        1500 plan      basic credits=10 period=PT1S    => catalog_updated catalog=2 item=2
        2999 view      a                               => period=0 next_reset=3000
        3000 view      a                               => period=1 next_reset=4000 expired=10 grants=~1~basic~1:10
        4500 view      a                               => period=2 next_reset=5000 expired=20 grants=~1~basic~2:10
    ";
}

/// Every rejection code is exercised by at least one table, except `stale_catalog` (the state
/// machine never answers it: an older catalog install is a replay; it is reserved for the layers
/// that route catalog changes) and the cluster map's codes, which `cluster::tests` covers.
#[test]
fn every_rejection_code_is_covered() {
    for rejection in Rejection::ALL {
        let code = rejection.code();
        if matches!(
            rejection,
            Rejection::StaleCatalog
                | Rejection::ClusterVersionConflict
                | Rejection::InvalidClusterChange
                | Rejection::NodeRemoved
        ) {
            continue;
        }
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
        (Rejection::UnknownFeature, 11, "unknown_feature"),
        (Rejection::SpendLimitExceeded, 12, "spend_limit_exceeded"),
        (Rejection::ReservationNotFound, 13, "reservation_not_found"),
        (Rejection::ReservationConflict, 14, "reservation_conflict"),
        (Rejection::ReservationExpired, 15, "reservation_expired"),
        (Rejection::ReservationReleased, 16, "reservation_released"),
        (Rejection::ReservationCommitted, 17, "reservation_committed"),
        (Rejection::InvalidTtl, 18, "invalid_ttl"),
        (Rejection::GrantNotFound, 19, "grant_not_found"),
        (Rejection::PlanNotFound, 20, "plan_not_found"),
        (Rejection::InvalidPeriod, 21, "invalid_period"),
        (Rejection::InvalidSeats, 22, "invalid_seats"),
        (Rejection::OverdraftInUse, 23, "overdraft_in_use"),
        (Rejection::InvalidSettings, 24, "invalid_settings"),
        (Rejection::StaleCatalog, 25, "stale_catalog"),
        (
            Rejection::ClusterVersionConflict,
            26,
            "cluster_version_conflict",
        ),
        (
            Rejection::InvalidClusterChange,
            27,
            "invalid_cluster_change",
        ),
        (Rejection::NodeRemoved, 28, "node_removed"),
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

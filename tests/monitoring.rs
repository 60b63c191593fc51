//! Continuous-monitoring guarantees (issue 2, must-show 2): on null streams the share of
//! streams with any `srm` or `input_divergence` alert, checked after every event, stays at
//! most alpha plus Monte Carlo error, while a chi-square test peeked at after every event
//! alarms on most streams; an injected tier leak is detected, with the events to detection.
//!
//! Run with `--nocapture` to see the measured figures.

mod support;

use armwatch::check::Check;
use armwatch::config::Settings;
use armwatch::engine::Engine;
use armwatch::sim::{Faults, Simulator, Users};
use armwatch::stats::divergence::chi_square_p;
use support::per_stream;

const ALPHA: f64 = 0.05;
const EVENTS: usize = 20_000;

fn settings() -> Settings {
    Settings::from_toml(&format!(
        r#"
[[experiment]]
id = "prompt-variant"
arms = {{ control = 0.5, treatment = 0.5 }}
treatment_inputs = ["fragment"]
watch_inputs = ["tier", "locale", "temperature", "max_tokens", "retrieved_docs", "tool_hash"]
[alerts]
alpha = {ALPHA}
"#
    ))
    .expect("valid test config")
}

struct StreamResult {
    srm_alarm: bool,
    divergence_alarm: bool,
    peeking_alarm: bool,
    /// (event index, value) of the `tier` input_divergence alert
    tier_alert: Option<(u64, Option<String>)>,
    /// input_divergence alerts on other inputs
    other_divergence: usize,
}

fn run_stream(mut sim: Simulator, settings: &Settings) -> StreamResult {
    let mut engine = Engine::new(settings);
    let mut buf = Vec::new();
    let mut out = StreamResult {
        srm_alarm: false,
        divergence_alarm: false,
        peeking_alarm: false,
        tier_alert: None,
        other_divergence: 0,
    };
    for i in 0..EVENTS {
        sim.next_event(&mut buf);
        engine.process(&buf).expect("simulated events are valid");
        // the alert state is read after every event
        for a in engine.take_new_alerts() {
            match a.check {
                Check::Srm => out.srm_alarm = true,
                Check::InputDivergence => {
                    out.divergence_alarm = true;
                    if a.subject == "tier" {
                        out.tier_alert = Some((a.first_event, a.value.clone()));
                    } else {
                        out.other_divergence += 1;
                    }
                }
                _ => {}
            }
        }
        // the naive monitor: a fixed-sample chi-square test peeked at after every event
        if i >= 100 && !out.peeking_alarm {
            let counts = engine.experiments()[0].srm.counts();
            out.peeking_alarm = chi_square_p(counts, &[0.5, 0.5]) < ALPHA;
        }
    }
    out
}

fn run_many(streams: u64, seed0: u64, faults: Faults) -> Vec<StreamResult> {
    run_many_with(streams, seed0, &|seed| {
        Simulator::single(seed, faults.clone())
    })
}

fn run_many_with(
    streams: u64,
    seed0: u64,
    make: &(dyn Fn(u64) -> Simulator + Sync),
) -> Vec<StreamResult> {
    let settings = settings();
    per_stream(streams, &|i| run_stream(make(seed0 + i), &settings))
}

#[test]
fn null_streams_keep_false_alarms_at_alpha_under_continuous_monitoring() {
    let n = 200;
    let results = run_many(n, 1_000, Faults::default());
    let share = |f: &dyn Fn(&StreamResult) -> bool| {
        results.iter().filter(|r| f(r)).count() as f64 / n as f64
    };
    let any = share(&|r| r.srm_alarm || r.divergence_alarm);
    let srm = share(&|r| r.srm_alarm);
    let div = share(&|r| r.divergence_alarm);
    let peek = share(&|r| r.peeking_alarm);
    // one-sided 99% Monte Carlo bound on a share estimated from n streams
    let mc = 2.326 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt();
    println!(
        "null: {n} streams x {EVENTS} events, alpha {ALPHA}: any alert {any:.3} (srm {srm:.3}, input_divergence {div:.3}); \
         bound alpha + MC = {:.3}; chi-square peeked after every event: {peek:.3}",
        ALPHA + mc
    );
    assert!(
        any <= ALPHA + mc,
        "false-alarm share {any} exceeds {}",
        ALPHA + mc
    );
    assert!(
        peek > 0.3,
        "the peeking baseline should alarm often ({peek}); is the stream really null?"
    );
}

#[test]
fn tier_leak_is_detected_and_named() {
    let n = 40;
    let leak = Faults {
        tier_leak: Some(("pro".into(), 0.55)),
        srm: None,
        ..Default::default()
    };
    let results = run_many(n, 50_000, leak);
    let mut delays: Vec<u64> = Vec::new();
    let mut named_pro = 0usize;
    for r in &results {
        if let Some((at, value)) = &r.tier_alert {
            named_pro += usize::from(value.as_deref() == Some("pro"));
            delays.push(*at + 1);
        }
    }
    let named_share = named_pro as f64 / delays.len().max(1) as f64;
    let others: usize = results.iter().map(|r| r.other_divergence).sum();
    delays.sort_unstable();
    let power = delays.len() as f64 / n as f64;
    let median = delays.get(delays.len() / 2).copied().unwrap_or(0);
    println!(
        "power: tier leak P(treatment | tier=pro) = 0.55 vs 0.5 (pro = 30% of traffic), {n} streams x {EVENTS} events, \
         alpha {ALPHA}: `tier`=pro detected in {power:.2} of streams; events to detection median {median}, min {}, max {}; \
         the alert named value `pro` in {named_share:.2} of them; alerts on the other (null) inputs: {others} in {n} streams",
        delays.first().unwrap_or(&0),
        delays.last().unwrap_or(&0)
    );
    assert!(
        (others as f64) / (n as f64) <= 2.0 * ALPHA,
        "too many alerts on null inputs: {others}"
    );
    assert!(power >= 0.8, "power {power} too low");
    assert!(
        named_share >= 0.8,
        "the leaking value should be named in most alerts ({named_share})"
    );
}

#[test]
fn srm_fault_is_detected() {
    let n = 100;
    let results = run_many(
        n,
        90_000,
        Faults {
            tier_leak: None,
            srm: Some(0.52),
            ..Default::default()
        },
    );
    let power = results.iter().filter(|r| r.srm_alarm).count() as f64 / n as f64;
    let div = results.iter().filter(|r| r.divergence_alarm).count();
    println!("power: SRM 52/48 against 50/50, {n} streams x {EVENTS} events: detected in {power:.2}; input_divergence alerts (should stay quiet): {div}");
    assert!(power >= 0.8, "SRM power {power}");
    // an imbalance that is the same for every value is SRM, not a leak through an input: the
    // divergence check keeps its false-alarm level under it
    let mc = 2.326 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt();
    assert!(
        div as f64 / n as f64 <= ALPHA + mc,
        "{div} input_divergence alerts under a pure SRM"
    );
}

/// Returning users with heavy-tailed activity, each always in one arm: with `unit` on the
/// events, counting first exposures keeps the false-alarm share at alpha; counting events
/// (what happens without `unit`) over-disperses the counts and alarms far more often.
#[test]
fn returning_users_are_counted_once() {
    let n = 100;
    let make = |emit_unit: bool| {
        move |seed: u64| {
            Simulator::single_with_users(
                seed,
                Faults::default(),
                Some(Users {
                    pool: 20_000,
                    emit_unit,
                }),
            )
        }
    };
    let share = |r: &[StreamResult]| {
        r.iter()
            .filter(|x| x.srm_alarm || x.divergence_alarm)
            .count() as f64
            / n as f64
    };
    let with_unit = share(&run_many_with(n, 7_000, &make(true)));
    let without_unit = share(&run_many_with(n, 7_000, &make(false)));
    let mc = 2.326 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt();
    println!(
        "returning users (pool 20,000, heavy-tailed activity), {n} null streams x {EVENTS} events, alpha {ALPHA}: \
         any alert with `unit` (first exposures counted) {with_unit:.3}; without `unit` (events counted) {without_unit:.3}"
    );
    assert!(
        with_unit <= ALPHA + mc,
        "first-exposure counting false alarms {with_unit}"
    );
    assert!(
        without_unit > ALPHA + mc,
        "the over-dispersion this guards against did not show ({without_unit})"
    );
}

/// Issue 9, must-show 6: restarts do not change the false-alarm figures. Each of 100 null
/// streams is monitored twice: uninterrupted, and restarted from a snapshot (the checkpoint
/// format) at five points (a kill -9 loses nothing the checkpoint covers, and the events after
/// it are replayed). Every check's alerts are the same, alert for alert (event and evidence),
/// so the share of streams that alarm is the same number.
#[test]
fn null_false_alarms_unchanged_by_restarts() {
    let settings = settings();
    let streams = 100u64;
    let results: Vec<(Vec<String>, Vec<String>)> = per_stream(streams, &|i| {
        let seed = 7_000 + i;
        let mut events = Vec::with_capacity(EVENTS);
        let mut sim =
            Simulator::single_with_users(seed, Faults::default(), Some(Users::returning(5_000)));
        for _ in 0..EVENTS {
            let mut b = Vec::new();
            sim.next_event(&mut b);
            events.push(b);
        }
        let alerts = |e: &Engine| -> Vec<String> {
            e.alerts()
                .iter()
                .map(|a| serde_json::to_string(a).expect("alert JSON"))
                .collect()
        };
        let mut whole = Engine::new(&settings);
        for b in &events {
            let _ = whole.process(b);
        }
        // five restart points per stream, spread by the seed
        let step = EVENTS as u64 / 6;
        let cuts: Vec<usize> = (1..=5u64)
            .map(|k| (k * step + (seed * 7_919 + k * 104_729) % step) as usize)
            .collect();
        let mut restarted = Engine::new(&settings);
        for (j, b) in events.iter().enumerate() {
            if cuts.contains(&j) {
                let bytes = armwatch::snapshot::write(&restarted);
                restarted =
                    armwatch::snapshot::read(&settings, &bytes).expect("snapshot reads back");
            }
            let _ = restarted.process(b);
        }
        (alerts(&whole), alerts(&restarted))
    });
    let whole = results.iter().filter(|r| !r.0.is_empty()).count();
    let restarted = results.iter().filter(|r| !r.1.is_empty()).count();
    println!(
        "null, {streams} streams x {EVENTS} events (returning users), every check: {whole} streams alarm uninterrupted, {restarted} restarted 5 times each"
    );
    for (i, (w, r)) in results.iter().enumerate() {
        assert_eq!(
            w, r,
            "stream {i}: the same alerts with and without restarts"
        );
    }
    assert_eq!(whole, restarted);
}

/// Partition-owned state raises each partition's alerts on its own: a stream over four
/// partitions is four tests per check, and at alpha each its null streams would alarm up to four
/// times as often. The daemon gives each partition's engine alpha / 4
/// (`Settings::for_partitions`); measured here on null streams split by unit (as re-keying
/// splits them), every check, checked after every event.
#[test]
fn null_false_alarms_over_partitions_stay_at_alpha() {
    const P: usize = 4;
    let base = settings();
    let split = base.for_partitions(P);
    let limits = base.limits.decode();
    let streams = 200u64;
    let results: Vec<(bool, bool)> = per_stream(streams, &|i| {
        let mut sim = Simulator::single_with_users(
            9_000 + i,
            Faults::default(),
            Some(Users::returning(5_000)),
        );
        let mut at_alpha: Vec<Engine> = (0..P).map(|_| Engine::new(&base)).collect();
        let mut at_share: Vec<Engine> = (0..P).map(|_| Engine::new(&split)).collect();
        let mut b = Vec::new();
        for _ in 0..EVENTS {
            sim.next_event(&mut b);
            let h = armwatch::source::repartition::route_hash(Some(&b), None, &limits);
            let p = armwatch::source::repartition::target(h, P as i32) as usize;
            let _ = at_alpha[p].process(&b);
            let _ = at_share[p].process(&b);
        }
        let any = |es: &[Engine]| es.iter().any(|e| !e.alerts().is_empty());
        (any(&at_alpha), any(&at_share))
    });
    let share = |f: fn(&(bool, bool)) -> bool| {
        results.iter().filter(|r| f(r)).count() as f64 / streams as f64
    };
    let (naive, split_share) = (share(|r| r.0), share(|r| r.1));
    let mc = 2.326 * (ALPHA * (1.0 - ALPHA) / streams as f64).sqrt();
    println!(
        "null, {streams} streams x {EVENTS} events over {P} partitions by unit, every check: \
         any alert {split_share:.3} at alpha/{P} per partition ({naive:.3} at alpha per partition); bound {:.3}",
        ALPHA + mc
    );
    assert!(
        split_share <= ALPHA + mc,
        "false-alarm share over partitions {split_share} exceeds {}",
        ALPHA + mc
    );
}

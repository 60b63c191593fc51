//! Kafka end to end: fills a 4-partition topic on a local tansu broker (started here, as the
//! integration tests do), then drains it in the same run twice: with a bare rdkafka
//! `BaseConsumer` that only touches each payload, and with `armwatch run --max-messages N`
//! (the release binary, its "drained" log line), and once more while 32 HTTP clients fetch
//! `/api/v1/report` ten times a second each. Prints the rates, their ratios and the mean
//! publish cost.
//!
//! `cargo bench --bench kafka` (1M events of one experiment, then 1M of a 1,000-experiment
//! fleet); `cargo bench --bench kafka -- single` runs one workload; `ARMWATCH_BENCH_EVENTS=N`
//! changes the size, `ARMWATCH_BENCH_ROUNDS=N` the number of interleaved bare/armwatch drain
//! pairs (3; the medians are printed, and every round's figures below them).

mod common;

#[path = "../tests/support/mod.rs"]
mod support;

use armwatch::sim::{Faults, Simulator};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{armwatch, Broker};

const PARTITIONS: i32 = 4;
/// HTTP clients fetching the report during the third drain.
const CLIENTS: usize = 32;

/// A workload: its name, the simulator that produces it, and whether its topic is keyed by
/// unit (as the README asks; otherwise at random, and with checkpoints on each partition's
/// engine counts a returning unit's first exposure again).
type Workload = (&'static str, fn() -> Simulator, bool);

/// Group timeouts that make tansu's first join take ~3 s instead of ~23 s (both consumers).
const GROUP_OPTIONS: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("max.poll.interval.ms", "10000"),
];

fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// Produce `n` simulator events keyed by unit (`by_unit`) or at random, as fast as the broker
/// takes them.
fn fill(brokers: &str, topic: &str, mut sim: Simulator, n: usize, by_unit: bool) -> f64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut key = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..n {
        sim.next_event(&mut buf);
        key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let random = key.to_le_bytes();
        let k = if by_unit {
            common::unit_of(&buf)
        } else {
            &random[..]
        };
        support::send(&producer, BaseRecord::to(topic).payload(&buf[..]).key(k));
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    n as f64 / start.elapsed().as_secs_f64()
}

/// Drain `n` messages with a bare consumer group member; messages/s from the first message.
fn drain_bare(brokers: &str, topic: &str, n: u64, group: &str) -> f64 {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in GROUP_OPTIONS {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    let (mut got, mut sum, mut first) = (0u64, 0u64, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            got += 1;
            // touch the payload so that the work is not optimized away
            sum = sum.wrapping_add(m.payload().map_or(0, |p| p.len() as u64));
            let _ = consumer.store_offset_from_message(&m);
        }
    }
    assert!(got == n, "bare consumer drained {got} of {n}");
    std::hint::black_box(sum);
    n as f64 / first.map_or(f64::NAN, |t| t.elapsed().as_secs_f64())
}

/// What `armwatch run` logged when it had drained the topic.
struct Drained {
    rate: f64,
    /// The rate from the first message to the last applied (without the final checkpoints).
    applying_rate: f64,
    /// The final checkpoints' wall seconds (in `rate`'s time, not in `applying_rate`'s).
    final_checkpoint_seconds: f64,
    /// armwatch's CPU seconds (all threads) from its first message to the end.
    cpu: f64,
    busy: f64,
    publish_mean_seconds: f64,
    checkpoints: f64,
    checkpoint_bytes: f64,
    checkpoint_seconds: f64,
    /// The engine thread's wall seconds: waiting for batches, applying them, checkpointing
    /// between them, publishing.
    stages: [f64; 4],
    /// Reports the HTTP clients received while armwatch drained (estimated from their rate
    /// over the whole run: they also fetch while it joins its group), and the CPU seconds of
    /// this process (the clients, on the same cores) per report.
    requests: f64,
    client_cpu_per_request: f64,
}

/// How `armwatch run` keeps its state.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One engine, no checkpoints.
    Off,
    /// An engine per input partition, checkpointed.
    Checkpoints,
    /// Re-keyed by unit through the repartition topic, checkpointed.
    Rekeyed,
}

/// Drain `n` messages with `armwatch run --max-messages n` (its own consumer group), while
/// `clients` HTTP clients fetch `/api/v1/report` ten times a second each; figures from its
/// "drained" log line.
fn drain_armwatch(
    brokers: &str,
    topic: &str,
    n: u64,
    dir: &std::path::Path,
    clients: usize,
    round: usize,
    mode: Mode,
) -> Drained {
    let checkpoints = mode != Mode::Off;
    let rekeyed = mode == Mode::Rekeyed;
    let config = dir.join("armwatch.toml");
    let http = format!("127.0.0.1:{}", support::free_port());
    // `ARMWATCH_BENCH_CHECKPOINT_MS`: the checkpoint interval (1,000 ms)
    let interval: u64 = common::env_number("ARMWATCH_BENCH_CHECKPOINT_MS", 1_000) as u64;
    // `ARMWATCH_BENCH_THREADS`: `[kafka.checkpoint] engine_threads` (0: the CPUs available)
    let threads: usize = common::env_number("ARMWATCH_BENCH_THREADS", 0);
    let options: Vec<String> = GROUP_OPTIONS
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"bench-armwatch-{clients}-{round}-{checkpoints}-{rekeyed}\"\ntopics = [\"{topic}\"]\n\
             options = {{ {} }}\n\n[kafka.checkpoint]\nenabled = {checkpoints}\ninterval_ms = {interval}\nengine_threads = {threads}\n\n\
             [kafka.repartition]\nenabled = {rekeyed}\npartitions = {PARTITIONS}\n\n[http]\nlisten = \"{http}\"\n\n[log]\nformat = \"json\"\n",
            options.join(", "),
        ),
    )
    .expect("config written");
    let log = dir.join(format!(
        "{topic}-{clients}-{round}-{checkpoints}-{rekeyed}.log"
    ));
    let args = [
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--max-messages",
        &n.to_string(),
    ];
    // `ARMWATCH_BENCH_WRAP="perf record -g --"`: run armwatch under a profiler
    let mut p = match std::env::var("ARMWATCH_BENCH_WRAP") {
        Ok(wrap) => {
            let mut w = wrap.split_whitespace();
            let mut cmd = Command::new(w.next().expect("a wrapper command"));
            cmd.args(w)
                .arg(env!("CARGO_BIN_EXE_armwatch"))
                .args(args)
                .stderr(std::fs::File::create(&log).expect("log file"));
            support::Proc(cmd.spawn().expect("wrapped armwatch starts"))
        }
        Err(_) => armwatch(&args, &log),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu_before, fetching) = (
        armwatch::process::cpu_seconds("self").unwrap_or(f64::NAN),
        Instant::now(),
    );
    let fetchers: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, http) = (stop.clone(), http.clone());
            std::thread::spawn(move || {
                let mut received = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // as a browser or Grafana asks: gzip accepted
                    received += usize::from(get_gzip(&http, "/api/v1/report") > 0);
                    // each client 10 times a second (320 requests/s for 32): a heavy dashboard
                    // load whose client side does not starve this 2-core machine by itself
                    std::thread::sleep(Duration::from_millis(100));
                }
                received
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(900);
    while p.0.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "armwatch run did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let requests: usize = fetchers.into_iter().map(|f| f.join().unwrap_or(0)).sum();
    let client_cpu = armwatch::process::cpu_seconds("self").unwrap_or(f64::NAN) - cpu_before;
    let fetching = fetching.elapsed().as_secs_f64();
    assert!(
        clients == 0 || requests > 0,
        "no report was served to the HTTP clients"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("\"drained\""))
        .unwrap_or_else(|| panic!("no drained line in the log:\n{text}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    let f = |k: &str| v["fields"][k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(f("messages") as u64, n, "armwatch drained {line}");
    Drained {
        rate: f("messages_per_second"),
        applying_rate: f("applying_messages_per_second"),
        final_checkpoint_seconds: f("final_checkpoint_seconds"),
        cpu: f("cpu_seconds"),
        busy: f("engine_busy_share"),
        publish_mean_seconds: f("publish_mean_seconds"),
        checkpoints: f("checkpoints"),
        checkpoint_bytes: f("checkpoint_bytes"),
        checkpoint_seconds: f("checkpoint_seconds"),
        stages: [
            f("waiting_seconds"),
            f("applying_seconds"),
            f("checkpointing_seconds"),
            f("publishing_seconds"),
        ],
        requests: requests as f64 / fetching * (f("messages") / f("messages_per_second")),
        client_cpu_per_request: client_cpu / requests.max(1) as f64,
    }
}

fn main() {
    let filter = common::workload_filter();
    let n: usize = common::env_number("ARMWATCH_BENCH_EVENTS", 1_000_000);
    let rounds: usize = common::env_number("ARMWATCH_BENCH_ROUNDS", 3).max(1);
    let single = || Simulator::single(1, Faults::default()).with_prompt_tokens();
    let fleet = || Simulator::fleet(3, 1_000, 2_000);
    let workloads: [Workload; 4] = [
        ("single", single, false),
        ("single-by-unit", single, true),
        ("fleet-1000", fleet, false),
        ("fleet-1000-by-unit", fleet, true),
    ];
    let broker = Broker::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    // `ARMWATCH_BENCH_KEEP=DIR`: keep armwatch's config and logs there
    let keep = std::env::var_os("ARMWATCH_BENCH_KEEP").map(std::path::PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    println!(
        "{:<18} {:>9} {:>11} {:>13} {:>15} {:>6} {:>7} {:>13} {:>6} {:>10}",
        "workload",
        "events",
        "produced/s",
        "bare drain/s",
        "armwatch run/s",
        "ratio",
        "busy",
        &format!("+{CLIENTS} clients/s"),
        "ratio",
        "publish ms"
    );
    for (name, make, by_unit) in workloads
        .iter()
        .filter(|(name, _, _)| common::selected(&filter, name))
    {
        let topic = format!("bench-{name}");
        create_topic(&broker.addr, &topic);
        let produced = fill(&broker.addr, &topic, make(), n, *by_unit);
        // interleaved rounds, medians: one drain of each varies by a third from run to run
        let (mut bares, mut alones, mut offs) = (Vec::new(), Vec::new(), Vec::new());
        // CPU microseconds per message: (broker, bare client) and (broker, armwatch)
        let (mut cpu_bare, mut cpu_armwatch) = (Vec::new(), Vec::new());
        let broker_pid = broker.pid().to_string();
        let cpu = |pid: &str| armwatch::process::cpu_seconds(pid).unwrap_or(f64::NAN);
        let per_msg = |s: f64| s * 1e6 / n as f64;
        for round in 0..rounds {
            let (b0, c0) = (cpu(&broker_pid), cpu("self"));
            bares.push(drain_bare(
                &broker.addr,
                &topic,
                n as u64,
                &format!("bench-bare-{round}"),
            ));
            cpu_bare.push((per_msg(cpu(&broker_pid) - b0), per_msg(cpu("self") - c0)));
            let b0 = cpu(&broker_pid);
            let a = drain_armwatch(
                &broker.addr,
                &topic,
                n as u64,
                dir,
                0,
                round,
                Mode::Checkpoints,
            );
            cpu_armwatch.push((per_msg(cpu(&broker_pid) - b0), per_msg(a.cpu)));
            alones.push(a);
            offs.push(drain_armwatch(
                &broker.addr,
                &topic,
                n as u64,
                dir,
                0,
                round,
                Mode::Off,
            ));
        }
        let on_off: Vec<f64> = alones
            .iter()
            .zip(&offs)
            .map(|(a, o)| a.rate / o.rate)
            .collect();
        let ratios: Vec<f64> = bares.iter().zip(&alones).map(|(b, a)| a.rate / b).collect();
        let bare = median(bares.clone());
        let alone = &alones[median_index(&alones.iter().map(|a| a.rate).collect::<Vec<_>>())];
        // the whole topic, so that its CPU per message compares with the drains alone's
        let served = drain_armwatch(
            &broker.addr,
            &topic,
            n as u64,
            dir,
            CLIENTS,
            0,
            Mode::Checkpoints,
        );
        // re-keyed by unit through the repartition topic (one round): the router re-produces
        // every message and the engines read them back
        let rekeyed = drain_armwatch(&broker.addr, &topic, n as u64, dir, 0, 0, Mode::Rekeyed);
        println!(
            "{:<18} {:>9} {:>11.0} {:>13.0} {:>15.0} {:>5.2}x {:>6.0}% {:>13.0} {:>5.2}x {:>10.2}",
            name,
            n,
            produced,
            bare,
            alone.rate,
            median(ratios.clone()),
            alone.busy * 100.0,
            served.rate,
            served.rate / alone.rate,
            alone.publish_mean_seconds * 1e3,
        );
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        };
        println!(
            "  CPU us/message (mean of rounds): bare drain: broker {:.2} + client {:.2}; armwatch drain: broker {:.2} + armwatch {:.2}",
            mean(&cpu_bare, |c| c.0),
            mean(&cpu_bare, |c| c.1),
            mean(&cpu_armwatch, |c| c.0),
            mean(&cpu_armwatch, |c| c.1),
        );
        // what the CPU allows: with every core busy, armwatch drains at most `cores / (broker +
        // armwatch CPU per message)`; the CPU per message that 0.9x the bare rate would need
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (a_broker, a_self) = (mean(&cpu_armwatch, |c| c.0), mean(&cpu_armwatch, |c| c.1));
        let ceiling = cores / ((a_broker + a_self) * 1e-6);
        let budget = cores / (0.9 * bare) * 1e6 - a_broker;
        println!(
            "  CPU ceiling on {cores} cores: {ceiling:.0}/s ({:.2}x bare); 0.9x bare {}",
            ceiling / bare,
            if budget > 0.0 {
                format!("needs armwatch at <= {budget:.2} us/message with the broker as measured")
            } else {
                format!("is out of reach with the broker as measured ({a_broker:.2} us/message while armwatch drains)")
            },
        );
        let written: f64 = alones.iter().map(|a| a.checkpoints).sum();
        let bytes: f64 = alones.iter().map(|a| a.checkpoint_bytes).sum();
        let secs: f64 = alones.iter().map(|a| a.checkpoint_seconds).sum();
        println!(
            "  checkpoints on/off: {:.2}x (median; rounds {}); off {}/s; {:.0} checkpoints per drain of {PARTITIONS} partitions, mean {:.2} MB and {:.1} ms each",
            median(on_off.clone()),
            on_off.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
            list(&offs.iter().map(|a| a.rate).collect::<Vec<_>>()),
            written / rounds as f64,
            bytes / written.max(1.0) / 1e6,
            secs / written.max(1.0) * 1e3,
        );
        let to_last: Vec<f64> = bares
            .iter()
            .zip(&alones)
            .map(|(b, a)| a.applying_rate / b)
            .collect();
        println!(
            "  to the last message applied (a long-running consumer's rate; the drain's final checkpoints, mean {:.2} s, left out): {}/s, {:.2}x bare (median; rounds {})",
            alones.iter().map(|a| a.final_checkpoint_seconds).sum::<f64>() / rounds as f64,
            list(&alones.iter().map(|a| a.applying_rate).collect::<Vec<_>>()),
            median(to_last.clone()),
            to_last.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
        );
        // what serving cost armwatch: its CPU beyond the drains alone's (mean of the rounds)
        // for as many messages, per report served; and what the clients themselves took of the
        // same cores
        let alone_per_msg = a_self * 1e-6;
        let requests = served.requests.max(1.0);
        println!(
            "  +{CLIENTS} clients, to the last message applied: {:.0}/s, {:.2}x armwatch alone's; armwatch CPU {:.2} us/message (alone {:.2}); ~{:.0} reports served while it drained, armwatch {:.0} us of CPU each beyond the drain alone's, the clients {:.0} us each",
            served.applying_rate,
            served.applying_rate / alone.applying_rate,
            served.cpu * 1e6 / n as f64,
            alone_per_msg * 1e6,
            served.requests,
            (served.cpu - alone_per_msg * n as f64) / requests * 1e6,
            served.client_cpu_per_request * 1e6,
        );
        let stages = |d: &[Drained]| {
            let mut sum = [0.0; 4];
            for x in d {
                for (s, v) in sum.iter_mut().zip(x.stages) {
                    *s += v / d.len() as f64;
                }
            }
            format!(
                "waiting {:.2}, applying {:.2}, checkpointing {:.2}, publishing {:.2}",
                sum[0], sum[1], sum[2], sum[3]
            )
        };
        println!(
            "  engine thread, seconds (mean of rounds): checkpoints on: {}; off: {}",
            stages(&alones),
            stages(&offs)
        );
        println!(
            "  re-keyed by unit ([kafka.repartition], one round): {:.0}/s, {:.2}x armwatch with checkpoints, {:.2}x bare",
            rekeyed.rate,
            rekeyed.rate / alone.rate,
            rekeyed.rate / bare,
        );
        println!(
            "  {rounds} rounds: bare {} | armwatch {} | ratios {}",
            list(&bares),
            list(&alones.iter().map(|a| a.rate).collect::<Vec<_>>()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// The index of the median of `v` (the lower one of an even count).
fn median_index(v: &[f64]) -> usize {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx[(idx.len() - 1) / 2]
}

fn median(v: Vec<f64>) -> f64 {
    v[median_index(&v)]
}

/// `GET path` with `Accept-Encoding: gzip`: the bytes received (0 on failure).
fn get_gzip(addr: &str, path: &str) -> usize {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.len()
}

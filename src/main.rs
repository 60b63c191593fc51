//! The `armwatch` command line: `run` (Kafka daemon), `replay` (files), `demo` (embedded
//! simulator, no Kafka needed) and `check-config`.

use anyhow::{Context as _, Result};
use armwatch::config::{LogSettings, Settings};
use armwatch::daemon::{DeadLetter, EngineLoop};
use armwatch::engine::Engine;
use armwatch::http::Shared;
use armwatch::metrics::Metrics;
use armwatch::partitions::Partitions;
use armwatch::sim::{Faults, Instruments, SimExperiment, Simulator, Users};
use armwatch::sink::SinkConfig;
use armwatch::source::simulated::SimulatedSource;
use armwatch::source::{file, kafka, state_topic};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

#[derive(Parser)]
#[command(
    name = "armwatch",
    version,
    about = "Tells you, while an LLM experiment runs, that its result cannot be trusted"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume events from Kafka and serve metrics, report and alerts.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many messages (benchmarks, batch jobs); logs the drain rate.
        #[arg(long)]
        max_messages: Option<u64>,
    },
    /// Run the same pipeline over files (NDJSON, .gz, Parquet, Arrow IPC) and print the JSON report.
    Replay {
        /// TOML configuration file (optional: undeclared experiments get equal weights).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Exit with status 3 when any alert fired.
        #[arg(long)]
        fail_on_alert: bool,
        /// Also write the final state as a snapshot (the checkpoint format) to this file, and
        /// print its size and the time to write and read it back.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// Input files, replayed in order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Simulated prompt traffic through the same pipeline, with switchable faults. No Kafka needed.
    Demo {
        /// Configuration (defaults to the embedded config/demo.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Faults to inject (repeatable).
        #[arg(long = "fault", value_enum, default_values_t = [Fault::TierLeak, Fault::Srm])]
        faults: Vec<Fault>,
        /// Events per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Stop after this many events and print the report (default: run until Ctrl-C).
        #[arg(long)]
        events: Option<u64>,
        /// HTTP listen address (overrides the config).
        #[arg(long)]
        listen: Option<String>,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Validate a configuration file.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// P(treatment | tier = pro) = 0.6 in prompt-variant.
    TierLeak,
    /// 55/45 split instead of 50/50 in router-v2.
    Srm,
    /// quality-judge is upgraded to v2 at event 10,000, scoring the control set 0.5 sd higher.
    JudgeUpgrade,
    /// From event 8,000 the treatment arm of prompt-variant retrieves with embedding model e5-v2.
    SubstrateRotation,
    /// 5% of confidence-gate's decisions near its 0.85 threshold take the other route.
    RouterOverrides,
    /// 30% of confidence-gate's scores in (0.85, 0.90) are nudged just below the threshold.
    ScoreNudging,
    /// The `nightly` eval set samples only traces from 02:00-04:00 UTC.
    NightSampler,
    /// ranker-v3's assignment service hashes `{salt}:{unit}:{tier}`, not the declared `{salt}:{unit}`.
    AssignmentKeyTier,
    /// 10% of ranker-v3's users land in the other arm half of the time.
    Crossover,
    /// 3 of workspace-collab's 400 workspaces have their users assigned one by one.
    MixedClusters,
    /// prompt-variant's arm depends on tier x locale jointly (each balanced on its own).
    InteractionLeak,
    /// A fifth experiment, ranker-v3-layer2, on ranker-v3's users hashed with ranker-v3's salt:
    /// the two layers are not orthogonal.
    SharedSalt,
    /// No fault.
    None,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            config,
            max_messages,
        } => load(&config).and_then(|s| run(s, &config, max_messages)),
        Cmd::Replay {
            config,
            fail_on_alert,
            snapshot,
            inputs,
        } => {
            load_or(config, "").and_then(|s| replay(s, &inputs, fail_on_alert, snapshot.as_deref()))
        }
        Cmd::Demo {
            config,
            faults,
            rate,
            events,
            listen,
            seed,
        } => load_or(config, DEMO_CONFIG).and_then(|mut s| {
            if let Some(l) = listen {
                s.http.listen = l;
            }
            demo(s, &faults, rate, events, seed)
        }),
        Cmd::CheckConfig { file } => load(&file).and_then(|s| {
            armwatch::source::kafka::check_clients(&s.kafka).map_err(|e| {
                anyhow::anyhow!(
                    "config: kafka.options: librdkafka refuses the client configuration: {e}\n  \
                     fix: correct or remove that option (see librdkafka's CONFIGURATION.md); \
                     options also come from ARMWATCH_KAFKA_OPTION_* variables and kafka.option_files"
                )
            })?;
            println!(
                "ok: {} declared experiment(s), {} topic(s), {} librdkafka option(s) accepted",
                s.experiments.len(),
                s.kafka.topics.len(),
                s.kafka.options.len()
            );
            Ok(())
        }),
    };
    if let Err(e) = result {
        eprintln!("armwatch: {e:#}");
        std::process::exit(2);
    }
}

fn load(path: &Path) -> Result<Settings> {
    Ok(Settings::load(path)?)
}

/// The file when given, else the embedded `default` TOML.
fn load_or(path: Option<PathBuf>, default: &str) -> Result<Settings> {
    match path {
        Some(p) => load(&p),
        None => Ok(Settings::from_toml(default)?),
    }
}

fn init_logging(log: &LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // colour codes only for a terminal: never into files or a log collector
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if log.format == armwatch::config::LogFormat::Json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

fn replay(
    settings: Settings,
    inputs: &[PathBuf],
    fail_on_alert: bool,
    snapshot: Option<&std::path::Path>,
) -> Result<()> {
    init_logging(&settings.log);
    let mut engine = Engine::new(&settings);
    let start = Instant::now();
    let mut messages = 0u64;
    for path in inputs {
        file::for_each_message(path, |m| {
            messages += 1;
            let _ = engine.process(m);
        })?;
    }
    let secs = start.elapsed().as_secs_f64();
    engine.count_memory();
    let report = armwatch::report::Report::lazy(&engine);
    {
        // streamed: a report of a thousand experiments is tens of megabytes as one string
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        out.flush()?;
    }
    // on stderr, for the scale benchmark and for sizing a deployment
    eprintln!(
        "replay: {messages} messages in {secs:.3} s ({:.0} messages/s), peak RSS {} bytes",
        messages as f64 / secs.max(1e-9),
        armwatch::process::peak_rss_bytes().unwrap_or(0)
    );
    if let Some(path) = snapshot {
        let t = Instant::now();
        let bytes = armwatch::snapshot::write(&engine);
        let written = t.elapsed().as_secs_f64();
        std::fs::write(path, &bytes)
            .with_context(|| format!("--snapshot: cannot write {}", path.display()))?;
        let t = Instant::now();
        armwatch::snapshot::read(&settings, &bytes).map_err(|e| {
            anyhow::anyhow!("--snapshot: the snapshot just written does not read back: {e}")
        })?;
        eprintln!(
            "snapshot: {} bytes ({} experiments), written in {:.1} ms, read back in {:.1} ms",
            bytes.len(),
            engine.experiments().len(),
            written * 1e3,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if fail_on_alert && !report.alerts.is_empty() {
        std::process::exit(3);
    }
    Ok(())
}

struct Outputs {
    shared: Arc<Shared>,
    metrics: Arc<Mutex<Metrics>>,
    alerts: tokio::sync::mpsc::Sender<armwatch::sink::Outgoing>,
    /// The sinks' acknowledgements of checkpointed alerts (taken by the engine loop).
    acks: Option<std::sync::mpsc::Receiver<(usize, usize)>>,
    sinks: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
    stop_http: tokio::sync::oneshot::Sender<()>,
}

async fn start_outputs(settings: &Settings, stdout_alerts: bool) -> Result<Outputs> {
    let shared = Arc::new(Shared::new(
        settings.http.report_values,
        settings.http.report_token.clone().map(|t| t.0),
    ));
    let metrics = Arc::new(Mutex::new(Metrics::new(settings.metrics.max_label_values)));
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let (ack_tx, acks) = std::sync::mpsc::channel();
    let kafka_sink = match &settings.alerts.kafka_topic {
        Some(t) => Some((
            kafka::client_config(&settings.kafka, &[])
                .create_with_context(armwatch::source::client_log::Quiet)
                .context("alerts.kafka_topic: cannot create the Kafka producer")?,
            t.clone(),
        )),
        None => None,
    };
    let a = &settings.alerts;
    let sink_cfg = SinkConfig {
        webhooks: a.webhook.iter().chain(&a.webhooks).cloned().collect(),
        webhook_ca: a.webhook_ca.clone(),
        kafka: kafka_sink,
        resend: Duration::from_secs(a.resend_interval_secs.max(1)),
        stdout: stdout_alerts,
        acks: Some(ack_tx),
        queue_capacity: a.queue_capacity,
        decor: armwatch::sink::alertmanager::Decor::from_settings(a, &settings.http.listen),
    };
    let sinks = tokio::spawn(armwatch::sink::run(rx, sink_cfg, metrics.clone()));
    let listener = tokio::net::TcpListener::bind(&settings.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", settings.http.listen))?;
    tracing::info!(addr = %settings.http.listen, "serving /metrics, /healthz, /readyz, /api/v1/report");
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let sh = shared.clone();
    let http_settings = settings.http.clone();
    let http = tokio::spawn(async move {
        let limits = armwatch::http::Limits {
            max_connections: http_settings.max_connections,
            header_timeout: Duration::from_millis(http_settings.header_timeout_ms),
        };
        if let Err(e) = armwatch::http::serve(listener, sh, limits, async move {
            let _ = stopped.await;
        })
        .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(Outputs {
        shared,
        metrics,
        alerts: tx,
        acks: Some(acks),
        sinks,
        http,
        stop_http,
    })
}

async fn finish(out: Outputs, lp: EngineLoop) {
    drop(lp); // closes the alert channel's last sender together with `out.alerts`
    drop(out.alerts);
    let _ = tokio::time::timeout(Duration::from_secs(10), out.sinks).await;
    let _ = out.stop_http.send(());
    let _ = out.http.await;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Wait for a worker thread (without blocking the runtime) and take back what it returns.
async fn join<T: Send + 'static>(worker: std::thread::JoinHandle<T>) -> Result<T> {
    tokio::task::spawn_blocking(move || worker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Watch the configuration file (every 2 s, by content): a changed file that validates goes to
/// the engine thread; one that does not is refused with its key and fix in the log and
/// counted, and the running configuration is kept (a ConfigMap update picked up without a
/// restart).
async fn watch_config(
    path: PathBuf,
    to_engine: std::sync::mpsc::Sender<Settings>,
    metrics: Arc<Mutex<Metrics>>,
    partitions: usize,
) {
    let digest = |p: &Path| {
        std::fs::read(p)
            .ok()
            .map(|b| twox_hash::XxHash3_64::oneshot(&b))
    };
    let mut seen = digest(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = digest(&path);
        if now.is_none() || now == seen {
            continue; // unchanged, or briefly absent while a ConfigMap's link is swapped
        }
        seen = now;
        match Settings::load(&path) {
            Ok(s) => {
                tracing::info!(path = %path.display(), "configuration file changed: reloading");
                if to_engine.send(s.for_partitions(partitions)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "configuration file changed but is invalid: refused, the running configuration is kept");
                if let Ok(m) = metrics.lock() {
                    m.config_reloads.with_label_values(&["refused"]).inc();
                }
            }
        }
    }
}

fn run(settings: Settings, config: &Path, max_messages: Option<u64>) -> Result<()> {
    init_logging(&settings.log);
    runtime()?.block_on(async move {
        let out = start_outputs(&settings, false).await?;
        let lag = Arc::new(Mutex::new(Vec::new()));
        // readiness is set by the consumer's rebalance callback
        let checkpointing = settings.kafka.checkpoint.enabled;
        let (controls, control_rx) = std::sync::mpsc::channel();
        let durable = Arc::new(Mutex::new(Vec::new()));
        // partition-owned engines (checkpoints) each test at alpha / partitions, so that the
        // stream's checks keep alpha (one engine for all partitions without checkpoints)
        let split = match checkpointing {
            true => {
                state_topic::ensure_waiting(&settings.kafka).await.with_context(|| format!("kafka.checkpoint.topic: cannot create the state topic `{}` or the repartition topic (create it compacted, or give the client the right to create topics)", settings.kafka.state_topic()))?;
                let n = kafka::engine_partitions(&settings.kafka).context("kafka: cannot read the partition count of the topics")?;
                if n == 0 {
                    tracing::warn!(topics = ?settings.kafka.engine_topics(), "the topics do not exist yet: alpha is not split over their partitions (restart once they exist)");
                }
                tracing::info!(partitions = n.max(1), alpha = settings.alerts.alpha / n.max(1) as f64, "each partition's checks test at alpha / partitions");
                n.max(1)
            }
            false => 1,
        };
        let engine_settings = settings.for_partitions(split);
        let checkpoints = if checkpointing {
            Some(Arc::new(kafka::Checkpoints::new(engine_settings.clone(), controls, durable.clone(), out.metrics.clone())))
        } else {
            None
        };
        let consumer = kafka::consumer(&settings.kafka, out.shared.clone(), lag.clone(), checkpoints).context("kafka: cannot create the consumer")?;
        let dead_letter: Option<Box<dyn DeadLetter + Send>> = match &settings.kafka.dead_letter_topic {
            Some(t) => Some(Box::new(kafka::KafkaDeadLetter::new(&settings.kafka, t).context("kafka.dead_letter_topic: cannot create the producer")?)),
            None => None,
        };
        let parts = if checkpointing { Partitions::none(&engine_settings) } else { Partitions::single(Engine::new(&settings), &settings) };
        let mut out = out;
        let acks = out.acks.take().context("the sinks' acknowledgements are taken once")?;
        let mut lp = EngineLoop::new(parts, out.metrics.clone(), out.shared.clone(), out.alerts.clone(), settings.log.rejected_per_second, dead_letter);
        if checkpointing {
            let store = state_topic::KafkaCheckpointStore::new(&settings.kafka).context("kafka.checkpoint: cannot create the state topic's producer")?;
            lp = lp.with_checkpoints(Box::new(store), Duration::from_millis(settings.kafka.checkpoint.interval_ms), durable, control_rx, acks);
            let threads = settings.kafka.checkpoint.threads();
            lp = lp.with_threads(threads);
            tracing::info!(topic = %settings.kafka.state_topic(), interval_ms = settings.kafka.checkpoint.interval_ms, engine_threads = threads, "checkpointing partition state");
        }
        let view_stop = Arc::new(AtomicBool::new(false));
        let watchdog = kafka::watch_brokers(&settings.kafka, kafka::readiness(&consumer), view_stop.clone()).context("kafka: cannot start the broker watchdog")?;
        let mut view_thread = None;
        if checkpointing && settings.kafka.checkpoint.view_interval_ms > 0 {
            let others = Arc::new(armwatch::partitions::MergedView::default());
            let every = Duration::from_millis(settings.kafka.checkpoint.view_interval_ms);
            view_thread = Some(state_topic::follow(&settings.kafka, engine_settings.clone(), every, others.clone(), view_stop.clone()).context("kafka.checkpoint.view_interval_ms: cannot follow the state topic (set it to 0 to report only owned partitions)")?);
            lp = lp.with_merged_view(others);
        }
        // OpenTelemetry input: mapped to events and produced to the input topic
        let (stop_otlp, otlp_stopped) = tokio::sync::oneshot::channel::<()>();
        let otlp = match &settings.otlp.listen {
            Some(_) => {
                let registry = out.metrics.lock().map(|m| m.registry().clone()).map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?;
                let limits = armwatch::http::Limits {
                    max_connections: settings.http.max_connections,
                    header_timeout: Duration::from_millis(settings.http.header_timeout_ms),
                };
                Some(armwatch::source::otlp::serve(&settings.otlp, &settings.kafka, limits, &registry, async move {
                    let _ = otlp_stopped.await;
                }).await?)
            }
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // re-keying: this replica's router feeds the repartition topic the engines read; it
        // stops the daemon (sets `stop`) when it cannot deliver
        let rekeyed = settings.kafka.repartition.enabled;
        let stop_router = stop.clone();
        let router = match rekeyed {
            true => Some(armwatch::source::repartition::spawn(&settings.kafka, settings.limits.decode(), out.metrics.clone(), stop.clone()).context("kafka.repartition: cannot start the router")?),
            false => None,
        };
        let (reload_tx, reloads) = std::sync::mpsc::channel();
        tracing::info!(brokers = %settings.kafka.brokers, topics = ?settings.kafka.topics, group = %settings.kafka.group_id, "consuming");
        let worker = std::thread::Builder::new()
            .name("armwatch-consumer".into())
            .spawn(move || kafka::consume(consumer, lp, stop2, lag, max_messages, rekeyed, reloads))?;
        let watcher = tokio::spawn(watch_config(config.to_path_buf(), reload_tx, out.metrics.clone(), split));
        let signal = tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            // stop receiving OTLP first: what it took is in Kafka, the consumer gets it next time
            let _ = stop_otlp.send(());
            stop.store(true, Ordering::Relaxed);
        });
        let lp = join(worker).await?.context("the engine thread failed")?;
        // the engines are done (a signal, or --max-messages): the router too
        stop_router.store(true, Ordering::Relaxed);
        let routed = match router {
            Some(r) => join(r).await?.map_err(|e| anyhow::anyhow!("kafka.repartition: the router stopped the daemon: {e}")),
            None => Ok(()),
        };
        if let Some(o) = otlp {
            o.abort();
        }
        view_stop.store(true, Ordering::Relaxed);
        if let Some(v) = view_thread {
            let _ = join(v).await;
        }
        let _ = join(watchdog).await;
        signal.abort();
        watcher.abort();
        finish(out, lp).await;
        routed
    })
}

fn demo(
    settings: Settings,
    faults: &[Fault],
    rate: u64,
    events: Option<u64>,
    seed: u64,
) -> Result<()> {
    init_logging(&settings.log);
    let has = |f: Fault| faults.contains(&f);
    let experiments = vec![
        SimExperiment::random(
            "prompt-variant",
            Faults {
                tier_leak: has(Fault::TierLeak).then(|| ("pro".to_string(), 0.6)),
                interaction_leak: has(Fault::InteractionLeak).then_some(0.08),
                ..Default::default()
            },
            // users keep their arm (and tier) on every visit: a unit drawn again must not
            // land in the other arm, which would be a real multiple exposure
            Some(Users::returning(u32::MAX)),
        ),
        SimExperiment::random(
            "router-v2",
            Faults {
                srm: has(Fault::Srm).then_some(0.55),
                ..Default::default()
            },
            // users keep their arm (and tier) on every visit: a unit drawn again must not
            // land in the other arm, which would be a real multiple exposure
            Some(Users::returning(u32::MAX)),
        ),
        SimExperiment::hash_assigned(
            "ranker-v3",
            Faults {
                key_includes_tier: has(Fault::AssignmentKeyTier),
                crossover: if has(Fault::Crossover) { 0.1 } else { 0.0 },
                ..Default::default()
            },
            5_000,
        ),
        SimExperiment::clustered(
            "workspace-collab",
            Faults {
                mixed_clusters: if has(Fault::MixedClusters) { 3 } else { 0 },
                ..Default::default()
            },
            50_000,
            400,
        ),
    ];
    let mut experiments = experiments;
    let mut settings = settings;
    if has(Fault::SharedSalt) {
        // declared like ranker-v3 (its prompt fragment is what the treatment changes)
        let layer = Settings::from_toml(
            "[[experiment]]\nid = \"ranker-v3-layer2\"\narms = { control = 0.5, treatment = 0.5 }\n\
             treatment_inputs = [\"fragment\"]",
        )
        .context("the shared-salt layer's declaration")?;
        settings.experiments.extend(layer.experiments);
        experiments.push(SimExperiment {
            assignment: armwatch::sim::SimAssignment::Hash {
                salt: "ranker-v3".into(),
            },
            ..SimExperiment::hash_assigned("ranker-v3-layer2", Faults::default(), 5_000)
        });
    }
    let instruments = Instruments {
        enabled: true,
        judge_upgrade: has(Fault::JudgeUpgrade).then_some((10_000, 0.5)),
        router_overrides: if has(Fault::RouterOverrides) {
            0.05
        } else {
            0.0
        },
        substrate_rotation: has(Fault::SubstrateRotation).then_some(8_000),
        score_nudging: if has(Fault::ScoreNudging) { 0.3 } else { 0.0 },
        sampler_night_only: Some(has(Fault::NightSampler)),
    };
    runtime()?.block_on(async move {
        let out = start_outputs(&settings, true).await?;
        out.shared.ready.store(true, Ordering::Relaxed);
        tracing::info!(faults = ?faults, rate, "demo: simulated prompt traffic for prompt-variant, router-v2, ranker-v3 (hash-assigned) and workspace-collab (cluster-randomized)");
        let lp = EngineLoop::new(Partitions::single(Engine::new(&settings), &settings), out.metrics.clone(), out.shared.clone(), out.alerts.clone(), settings.log.rejected_per_second, None);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let source = SimulatedSource::new(Simulator::new(seed, experiments).with_instruments(instruments), rate, events);
        let worker = std::thread::Builder::new()
            .name("armwatch-demo".into())
            .spawn(move || armwatch::source::drive(source, lp, &stop2, |_| {}))?;
        if events.is_none() {
            shutdown_signal().await;
            stop.store(true, Ordering::Relaxed);
        }
        let lp = join(worker).await?.context("the engine thread failed")?;
        if events.is_some() {
            println!("{}", serde_json::to_string_pretty(&lp.engine().report())?);
        }
        finish(out, lp).await;
        Ok(())
    })
}

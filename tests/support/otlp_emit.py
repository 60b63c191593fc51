"""Send real OpenTelemetry data to armwatch's OTLP/HTTP receiver, and write the same events in
the armwatch event contract (NDJSON) for comparison.

  python3 otlp_emit.py ENDPOINT OUT.ndjson N

The OpenTelemetry SDK (opentelemetry-sdk + opentelemetry-exporter-otlp-proto-http, protobuf)
exports N GenAI `chat` spans, each with a `feature_flag.evaluation` span event (experiment
`prompt-v`, variant by a hash of the user) and for some a `gen_ai.evaluation.result` span event
(judge `quality`), then N/2 `feature_flag.evaluation` log records (experiment `flag-exp`),
plus spans and logs that are not experiment events (a database span, an ordinary log line).
Then OTLP/JSON requests written by hand after the OTLP specification (camelCase names, hex
ids, 64-bit integers as strings), one of them gzip-compressed. Every export is flushed before
the next begins, so the events reach Kafka in the order they are written here.
"""

import gzip
import hashlib
import json
import sys
import urllib.request

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry._logs import LogRecord

endpoint, out_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, ms


def h(s):
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")


TIERS = ["free", "pro", "enterprise"]
MODELS = ["gpt-a", "gpt-b"]
out = open(out_path, "w")


def emit(ev):
    out.write(json.dumps(ev, separators=(",", ":")) + "\n")


resource = Resource.create({"service.name": "gateway", "armwatch.input.region": "eu"})

# --- traces, protobuf, through the SDK -------------------------------------------------------
tp = TracerProvider(resource=resource)
tp.add_span_processor(BatchSpanProcessor(
    OTLPSpanExporter(endpoint=endpoint + "/v1/traces"),
    max_queue_size=100_000, max_export_batch_size=256, schedule_delay_millis=60_000))
tracer = tp.get_tracer("armwatch-test")
for i in range(n):
    user = f"u{i % (n // 3)}"
    arm = "treatment" if h("prompt-v:" + user) % 2 else "control"
    tier = TIERS[h("tier:" + user) % 3]
    model = MODELS[i % 2]
    start = (T0 + i * 1000) * 1_000_000
    span = tracer.start_span("chat " + model, start_time=start, attributes={
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.max_tokens": 256 * (1 + i % 3),
        "armwatch.input.tier": tier,
    })
    span.add_event("feature_flag.evaluation", {
        "feature_flag.key": "prompt-v",
        "feature_flag.result.variant": arm,
        "feature_flag.context.id": user,
    }, timestamp=start)
    emit({"kind": "prompt", "ts": T0 + i * 1000, "experiment": "prompt-v", "arm": arm, "unit": user,
          "inputs": {"model": model, "temperature": 0.7, "max_tokens": 256 * (1 + i % 3),
                     "service": "gateway", "tier": tier, "region": "eu"}})
    if i % 4 == 0:
        score = float(h(f"score:{i}") % 5 + 1)
        version = "judge-1" if i < n // 2 else "judge-2"
        span.add_event("gen_ai.evaluation.result", {
            "gen_ai.evaluation.name": "quality",
            "gen_ai.evaluation.score.value": score,
            "armwatch.judge_version": version,
        }, timestamp=start + 500_000_000)
        emit({"kind": "judgment", "ts": T0 + i * 1000 + 500, "experiment": "prompt-v", "arm": arm,
              "unit": user, "judge": "quality", "judge_version": version, "score": score})
    span.end(end_time=start + 1_000_000_000)
    if i % 10 == 0:
        # not an experiment event: counted as skipped by the receiver
        tracer.start_span("SELECT users", start_time=start).end(end_time=start + 1000)
assert tp.force_flush(60_000), "spans not exported"

# --- logs, protobuf, through the SDK ---------------------------------------------------------
lp = LoggerProvider(resource=resource)
lp.add_log_record_processor(BatchLogRecordProcessor(
    OTLPLogExporter(endpoint=endpoint + "/v1/logs"),
    max_queue_size=100_000, max_export_batch_size=256, schedule_delay_millis=60_000))
logger = lp.get_logger("armwatch-test")
for i in range(n // 2):
    user = f"f{i % (n // 4)}"
    arm = ["a", "b", "c"][h("flag-exp:" + user) % 3]
    ts = T0 + i * 2000 + 7
    logger.emit(LogRecord(timestamp=ts * 1_000_000, event_name="feature_flag.evaluation", attributes={
        "feature_flag.key": "flag-exp",
        "feature_flag.result.variant": arm,
        "feature_flag.context.id": user,
        "armwatch.input.plan": TIERS[h("plan:" + user) % 3],
    }))
    emit({"kind": "prompt", "ts": ts, "experiment": "flag-exp", "arm": arm, "unit": user,
          "inputs": {"service": "gateway", "plan": TIERS[h("plan:" + user) % 3], "region": "eu"}})
    if i % 25 == 0:
        logger.emit(LogRecord(timestamp=ts * 1_000_000, body="cache warmed"))
assert lp.force_flush(60_000), "logs not exported"

# --- OTLP/JSON by hand -----------------------------------------------------------------------
def post(path, payload, compress=False):
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(endpoint + path, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.status
        json.loads(r.read() or b"{}")


def kv(k, v):
    if isinstance(v, bool):
        return {"key": k, "value": {"boolValue": v}}
    if isinstance(v, int):
        return {"key": k, "value": {"intValue": str(v)}}
    if isinstance(v, float):
        return {"key": k, "value": {"doubleValue": v}}
    return {"key": k, "value": {"stringValue": v}}


for batch in range(2):
    spans = []
    for j in range(50):
        i = n + batch * 50 + j
        user = f"u{i % (n // 3)}"
        arm = "treatment" if h("prompt-v:" + user) % 2 else "control"
        ts = T0 + i * 1000
        spans.append({
            "traceId": "%032x" % h(f"trace{i}"), "spanId": "%016x" % h(f"span{i}"),
            "name": "chat", "kind": 3,
            "startTimeUnixNano": str(ts * 1_000_000), "endTimeUnixNano": str((ts + 900) * 1_000_000),
            "attributes": [kv("gen_ai.operation.name", "chat"), kv("gen_ai.request.model", "gpt-a"),
                           kv("gen_ai.request.max_tokens", 512), kv("feature_flag.key", "prompt-v"),
                           kv("feature_flag.result.variant", arm), kv("enduser.id", user)],
            "events": [], "status": {},
        })
        emit({"kind": "prompt", "ts": ts, "experiment": "prompt-v", "arm": arm, "unit": user,
              "inputs": {"model": "gpt-a", "max_tokens": 512, "service": "gateway", "region": "eu"}})
    post("/v1/traces", {"resourceSpans": [{
        "resource": {"attributes": [kv("service.name", "gateway"), kv("armwatch.input.region", "eu")]},
        "scopeSpans": [{"scope": {"name": "hand"}, "spans": spans}]}]}, compress=batch == 1)

records = []
for j in range(40):
    ts = T0 + (n + 200 + j) * 1000
    records.append({"timeUnixNano": str(ts * 1_000_000), "eventName": "gen_ai.evaluation.result",
                    "attributes": [kv("gen_ai.evaluation.name", "helpfulness"),
                                   kv("gen_ai.evaluation.score.value", float(j % 7)),
                                   kv("armwatch.judge_version", "helper-1")]})
    emit({"kind": "judgment", "ts": ts, "judge": "helpfulness", "judge_version": "helper-1",
          "score": float(j % 7)})
post("/v1/logs", {"resourceLogs": [{"resource": {}, "scopeLogs": [{"scope": {}, "logRecords": records}]}]})
out.close()

//! `armwatch replay` over NDJSON, gzip NDJSON, Parquet (inputs as a struct column and as
//! flattened `inputs.NAME` columns) and Arrow IPC of the same events gives identical reports.

mod support;

use armwatch::sim::{Faults, Simulator};
use arrow::array::RecordBatch;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn replay(args: &[&Path]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_armwatch"))
        .arg("replay")
        .args(args)
        .output()
        .expect("armwatch replay runs");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report is JSON")
}

/// Read NDJSON into Arrow with an inferred schema (inputs becomes a struct column).
fn batches(ndjson: &[u8]) -> (Arc<arrow::datatypes::Schema>, Vec<RecordBatch>) {
    let (schema, _) =
        arrow::json::reader::infer_json_schema(std::io::Cursor::new(ndjson), None).expect("schema");
    let schema = Arc::new(schema);
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(1024)
        .build(std::io::Cursor::new(ndjson))
        .expect("reader");
    (schema, reader.map(|b| b.expect("batch")).collect())
}

/// Flatten the `inputs` struct column into `inputs.NAME` columns.
fn flatten(batch: &RecordBatch) -> RecordBatch {
    use arrow::array::{Array, StructArray};
    use arrow::datatypes::{Field, Schema};
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.name() == "inputs" {
            let s = c.as_any().downcast_ref::<StructArray>().expect("struct");
            for (sf, sc) in s.fields().iter().zip(s.columns()) {
                fields.push(Field::new(
                    format!("inputs.{}", sf.name()),
                    sf.data_type().clone(),
                    true,
                ));
                cols.push(sc.clone());
            }
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("flattened batch")
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let f = std::fs::File::create(path).expect("parquet file");
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batches[0].schema(), None).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
}

#[test]
fn ndjson_parquet_and_arrow_give_identical_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ndjson = Simulator::single(
        77,
        Faults {
            tier_leak: Some(("pro".into(), 0.65)),
            srm: None,
            ..Default::default()
        },
    )
    .ndjson(12_000);
    let nd = dir.path().join("events.ndjson");
    std::fs::write(&nd, &ndjson).expect("ndjson");
    let gz = dir.path().join("events.ndjson.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("gz"),
        flate2::Compression::fast(),
    );
    enc.write_all(&ndjson).expect("gz write");
    enc.finish().expect("gz finish");

    let (schema, bs) = batches(&ndjson);
    let pq = dir.path().join("events.parquet");
    write_parquet(&pq, &bs);
    let flat: Vec<RecordBatch> = bs.iter().map(flatten).collect();
    let pq_flat = dir.path().join("events-flat.parquet");
    write_parquet(&pq_flat, &flat);
    let ipc = dir.path().join("events.arrow");
    let mut w =
        arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&ipc).expect("ipc"), &schema)
            .expect("ipc writer");
    for b in &bs {
        w.write(b).expect("ipc write");
    }
    w.finish().expect("ipc finish");

    let reference = replay(&[&nd]);
    assert_eq!(reference["events"]["accepted"], 12_000);
    let alerts = reference["alerts"].as_array().expect("alerts");
    assert!(
        alerts.iter().any(|a| a["check"] == "input_divergence"
            && a["subject"] == "tier"
            && a["value"] == "pro"),
        "{alerts:?}"
    );
    for other in [&gz, &pq, &pq_flat, &ipc] {
        let got = replay(&[other]);
        assert!(
            got == reference,
            "report of {} differs from NDJSON at {:?}",
            other.display(),
            first_difference(&got, &reference, String::new())
        );
    }
}

#[test]
fn bad_lines_are_counted_by_reason_and_replay_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = Simulator::single(5, Faults::default()).ndjson(100);
    data.extend_from_slice(
        b"not json\n{\"kind\":\"prompt\"\n\xff\xfe\n{\"kind\":\"teleport\",\"ts\":1}\n\n",
    );
    data.extend_from_slice(&Simulator::single(6, Faults::default()).ndjson(50));
    let p = dir.path().join("mixed.ndjson");
    std::fs::write(&p, data).expect("write");
    let r = replay(&[&p]);
    assert_eq!(r["events"]["accepted"], 150);
    assert_eq!(
        r["events"]["rejected"],
        serde_json::json!({"not_json": 1, "truncated": 1, "not_utf8": 1, "unknown_kind": 1})
    );
    assert_eq!(
        r["experiments"]["prompt-variant"]["note"],
        "undeclared experiment: equal design weights assumed"
    );
}

/// The path and values of the first difference between two JSON values.
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: String,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some((format!("{path}.{k}"), v.to_string(), "absent".into())),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| (format!("{path}.{k}"), "absent".into(), y[k].to_string()))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some((path, a.to_string(), b.to_string())),
    }
}

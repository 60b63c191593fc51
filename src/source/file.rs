//! Replay sources: NDJSON (optionally gzip), Parquet and Arrow IPC files.
//!
//! Columnar rows are turned back into contract JSON (one object per row, nulls omitted) and go
//! through the same decoder as Kafka messages, so a replay of Parquet and of NDJSON with the
//! same events gives the same report. `inputs` may be a struct column or flattened
//! `inputs.NAME` columns; timestamp columns become epoch milliseconds.

use arrow::array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

/// A replay input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// IO error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not readable as the format its name says.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The formats replay understands, chosen by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Newline-delimited JSON.
    Ndjson,
    /// Gzip-compressed NDJSON.
    NdjsonGz,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC (file or stream).
    ArrowIpc,
}

impl Format {
    /// Guess from the file name.
    pub fn of(path: &Path) -> Format {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".gz") {
            Format::NdjsonGz
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Format::Parquet
        } else if name.ends_with(".arrow")
            || name.ends_with(".ipc")
            || name.ends_with(".feather")
            || name.ends_with(".arrows")
        {
            Format::ArrowIpc
        } else {
            Format::Ndjson
        }
    }
}

/// Feed every message of `path` to `f`, in file order.
pub fn for_each_message(path: &Path, mut f: impl FnMut(&[u8])) -> Result<(), FileError> {
    let p = path.display().to_string();
    let io = |source| FileError::Io {
        path: p.clone(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    match Format::of(path) {
        Format::Ndjson => lines(BufReader::with_capacity(READ_BUFFER, file), &mut f).map_err(io),
        Format::NdjsonGz => lines(
            BufReader::with_capacity(READ_BUFFER, flate2::read::MultiGzDecoder::new(file)),
            &mut f,
        )
        .map_err(io),
        Format::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.build())
                    .map_err(|e| FileError::Format {
                        path: p.clone(),
                        message: e.to_string(),
                    })?;
            for batch in reader {
                let batch = batch.map_err(|e| FileError::Format {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                batch_rows(&batch, &mut f).map_err(|message| FileError::Format {
                    path: p.clone(),
                    message,
                })?;
            }
            Ok(())
        }
        Format::ArrowIpc => {
            let mut bytes = Vec::new();
            BufReader::new(file).read_to_end(&mut bytes).map_err(io)?;
            let fmt = |e: arrow::error::ArrowError| FileError::Format {
                path: p.clone(),
                message: e.to_string(),
            };
            let batches: Vec<RecordBatch> =
                match arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(&bytes), None) {
                    Ok(r) => r.collect::<Result<_, _>>().map_err(fmt)?,
                    Err(_) => arrow::ipc::reader::StreamReader::try_new(
                        std::io::Cursor::new(&bytes),
                        None,
                    )
                    .map_err(fmt)?
                    .collect::<Result<_, _>>()
                    .map_err(fmt)?,
                };
            for batch in &batches {
                batch_rows(batch, &mut f).map_err(|message| FileError::Format {
                    path: p.clone(),
                    message,
                })?;
            }
            Ok(())
        }
    }
}

/// Read buffer of the line reader: few reads of a large file, lines handed over in place.
const READ_BUFFER: usize = 1 << 18;

/// Bytes of a line kept at most: a longer one is handed over cut there (the decoder rejects
/// it as oversized), so a file without newlines cannot take all the memory.
const MAX_LINE: usize = 1 << 26;

/// Hand every non-blank line (without its `\n` / `\r\n`) to `f`: straight from the reader's
/// buffer, copied only when a line straddles two reads.
fn lines(mut r: impl BufRead, f: &mut impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let emit = |line: &[u8], f: &mut dyn FnMut(&[u8])| {
        let mut line = line;
        while let [rest @ .., b'\n' | b'\r'] = line {
            line = rest;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            f(line);
        }
    };
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            if !carry.is_empty() {
                emit(&carry, f);
            }
            return Ok(());
        }
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &chunk[start..]) {
            let end = start + nl + 1;
            if carry.is_empty() {
                emit(&chunk[start..end], f);
            } else {
                append_capped(&mut carry, &chunk[start..end]);
                emit(&carry, f);
                carry.clear();
            }
            start = end;
        }
        append_capped(&mut carry, &chunk[start..]);
        let n = chunk.len();
        r.consume(n);
    }
}

fn append_capped(carry: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_LINE.saturating_sub(carry.len());
    carry.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Convert a batch to contract JSON rows.
fn batch_rows(batch: &RecordBatch, f: &mut impl FnMut(&[u8])) -> Result<(), String> {
    let batch = normalize(batch).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(batch.num_rows() * 256);
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
        w.write(&batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    lines(out.as_slice(), f).map_err(|e| e.to_string())
}

/// Nest `inputs.NAME` columns into an `inputs` struct and turn timestamps into epoch ms.
fn normalize(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut input_fields: Vec<Field> = Vec::new();
    let mut input_columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let col = to_ms(col)?;
        let field = Field::new(field.name(), col.data_type().clone(), true);
        match field.name().strip_prefix("inputs.") {
            Some(name) => {
                input_fields.push(Field::new(name, col.data_type().clone(), true));
                input_columns.push(col);
            }
            None => {
                fields.push(field);
                columns.push(col);
            }
        }
    }
    if !input_fields.is_empty() {
        let inputs = StructArray::try_new(input_fields.into(), input_columns, None)?;
        fields.push(Field::new("inputs", inputs.data_type().clone(), true));
        columns.push(Arc::new(inputs));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

fn to_ms(col: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    match col.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            cast(&ms, &DataType::Int64)
        }
        DataType::Dictionary(_, _) | DataType::Utf8View | DataType::LargeUtf8 => {
            cast(col, &DataType::Utf8)
        }
        _ => Ok(col.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};

    /// Lines come out whole whatever the read size: straddling reads, `\r\n`, blank lines,
    /// no final newline.
    #[test]
    fn lines_across_reads() {
        let text = b"{\"a\":1}\n\n{\"bb\":22}\r\n   \n{\"ccc\":333}\n{\"last\":4}";
        let want: Vec<&[u8]> = vec![
            b"{\"a\":1}",
            b"{\"bb\":22}",
            b"{\"ccc\":333}",
            b"{\"last\":4}",
        ];
        for cap in [1, 2, 3, 7, 16, 4096] {
            let mut got: Vec<Vec<u8>> = Vec::new();
            lines(BufReader::with_capacity(cap, &text[..]), &mut |l| {
                got.push(l.to_vec())
            })
            .unwrap();
            assert_eq!(got, want, "read buffer {cap}");
        }
    }

    #[test]
    fn flattened_inputs_and_timestamps_become_contract_json() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                Field::new("experiment", DataType::Utf8, true),
                Field::new("arm", DataType::Utf8, true),
                Field::new("inputs.tier", DataType::Utf8, true),
                Field::new("inputs.temperature", DataType::Float64, true),
                Field::new("score", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["prompt"])),
                Arc::new(TimestampMicrosecondArray::from(vec![1_767_225_600_000_000])),
                Arc::new(StringArray::from(vec!["x"])),
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(StringArray::from(vec![Some("pro")])),
                Arc::new(Float64Array::from(vec![0.7])),
                Arc::new(Int64Array::from(vec![None])),
            ],
        )
        .unwrap();
        let mut rows = Vec::new();
        batch_rows(&batch, &mut |r: &[u8]| {
            rows.push(String::from_utf8(r.to_vec()).unwrap())
        })
        .unwrap();
        assert_eq!(rows.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&rows[0]).unwrap();
        assert_eq!(v["ts"], 1_767_225_600_000i64);
        assert_eq!(v["inputs"]["tier"], "pro");
        assert_eq!(v["inputs"]["temperature"], 0.7);
        assert!(v.get("score").is_none(), "nulls are omitted");
    }
}

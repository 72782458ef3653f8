//! Decoding and validating request bodies: the device contract of docs/device-api.md.
//!
//! A body that cannot be read at all (bad gzip, malformed JSON outside NDJSON, wrong shape) is a
//! [`BodyError`]. Inside a readable body each item stands alone: a valid reading is kept even when
//! its neighbours are rejected, and each rejected item gets a [`Rejection`] naming the field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use hoistway_model::limits::*;
use hoistway_model::{Direction, DoorState, EventKind, LiftId, Reading};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    NdJson,
}

impl BodyFormat {
    /// The format for a `Content-Type` header value, `None` when unsupported.
    pub fn from_content_type(value: Option<&str>) -> Option<Self> {
        let essence = value?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(BodyFormat::NdJson)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest body after gzip decompression.
    pub max_decoded_bytes: usize,
    /// Most readings in one request.
    pub max_items: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_decoded_bytes: 16 << 20,
            max_items: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("body is empty")]
    Empty,
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("decompressed body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body is not valid JSON: {message} (line {line}, column {column})")]
    Malformed {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("body must be a JSON object (one reading) or an array of readings, found {0}")]
    WrongShape(&'static str),
    #[error("body holds {count} readings, more than the limit of {limit}")]
    TooManyItems { count: usize, limit: usize },
}

/// Why one item of a body was rejected.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Rejection {
    /// Position in the array or NDJSON stream (0-based; NDJSON counts non-empty lines).
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lift_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The offending field (`""` when the item as a whole is wrong).
    pub field: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
    /// The body was a single JSON object rather than a batch.
    pub single: bool,
    pub items: usize,
}

/// Gunzips (when `gzip`), parses and validates a body received at `now_us`.
pub fn decode_body(
    body: &[u8],
    gzip: bool,
    format: BodyFormat,
    limits: &DecodeLimits,
    now_us: i64,
) -> Result<Decoded, BodyError> {
    let unzipped;
    let body = if gzip {
        unzipped = gunzip(body, limits.max_decoded_bytes)?;
        &unzipped[..]
    } else {
        if body.len() > limits.max_decoded_bytes {
            return Err(BodyError::TooLarge {
                limit: limits.max_decoded_bytes,
            });
        }
        body
    };
    let mut out = Decoded::default();
    match format {
        BodyFormat::Json => decode_json(body, limits, now_us, &mut out)?,
        BodyFormat::NdJson => decode_ndjson(body, limits, now_us, &mut out)?,
    }
    if out.items == 0 {
        return Err(BodyError::Empty);
    }
    Ok(out)
}

fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

fn malformed(e: &serde_json::Error) -> BodyError {
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    BodyError::Malformed {
        message,
        line: e.line(),
        column: e.column(),
    }
}

fn decode_json(
    body: &[u8],
    limits: &DecodeLimits,
    now_us: i64,
    out: &mut Decoded,
) -> Result<(), BodyError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(BodyError::Empty),
        Some(b'{') => {
            // Syntax first, so a truncated object is a malformed body, not a field error.
            let raw: &RawValue = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            out.single = true;
            out.items = 1;
            push_item(raw.get(), 0, now_us, out);
            Ok(())
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            if items.len() > limits.max_items {
                return Err(BodyError::TooManyItems {
                    count: items.len(),
                    limit: limits.max_items,
                });
            }
            out.items = items.len();
            out.readings.reserve(items.len());
            for (index, raw) in items.iter().enumerate() {
                push_item(raw.get(), index, now_us, out);
            }
            Ok(())
        }
        Some(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => Err(malformed(&e)),
            Ok(v) => Err(BodyError::WrongShape(json_kind(&v))),
        },
    }
}

fn decode_ndjson(
    body: &[u8],
    limits: &DecodeLimits,
    now_us: i64,
    out: &mut Decoded,
) -> Result<(), BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::Malformed {
        message: format!("body is not UTF-8: {e}"),
        line: 1 + body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        column: 0,
    })?;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if out.items == limits.max_items {
            return Err(BodyError::TooManyItems {
                count: text.lines().filter(|l| !l.trim().is_empty()).count(),
                limit: limits.max_items,
            });
        }
        let index = out.items;
        out.items += 1;
        push_item(line, index, now_us, out);
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A reading as lifts send it. Unknown fields are ignored so newer firmware keeps working
/// against an older server; model-specific metrics belong in `extra`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TelemetryReading)]
pub struct WireReading<'a> {
    /// The lift's id: 1–64 of `A-Z a-z 0-9 . _ -`.
    #[serde(borrow)]
    #[schema(value_type = String)]
    lift_id: Cow<'a, str>,
    /// Raised by the controller when its sequence restarts (after a reset that lost `seq`).
    #[serde(default)]
    epoch: u64,
    /// Increases by one per reading within an epoch: a resent reading is counted once.
    seq: u64,
    /// The device's clock, RFC 3339 with an offset.
    #[serde(borrow)]
    #[schema(value_type = String, format = DateTime)]
    ts: Cow<'a, str>,
    floor: i64,
    direction: Direction,
    door: DoorState,
    #[serde(default)]
    load_kg: Option<f64>,
    #[serde(default)]
    speed_mps: Option<f64>,
    #[serde(default)]
    motor_temp_c: Option<f64>,
    #[serde(default)]
    vibration_mm_s: Option<f64>,
    /// Trips since the previous reading.
    #[serde(default)]
    trips: u64,
    /// Door open-close cycles since the previous reading.
    #[serde(default)]
    door_cycles: u64,
    #[serde(default, borrow)]
    #[schema(value_type = Vec<String>)]
    faults: Vec<Cow<'a, str>>,
    #[serde(default)]
    events: Vec<EventKind>,
    /// Model-specific numeric metrics.
    #[serde(default)]
    extra: BTreeMap<String, f64>,
}

/// Identity fields pulled out of an item that failed to parse, so its rejection can say which
/// reading it was.
#[derive(Deserialize, Default)]
struct Identity {
    #[serde(default)]
    lift_id: Option<serde_json::Value>,
    #[serde(default)]
    seq: Option<serde_json::Value>,
}

fn push_item(raw: &str, index: usize, now_us: i64, out: &mut Decoded) {
    let de = &mut serde_json::Deserializer::from_str(raw);
    let result = serde_path_to_error::deserialize::<_, WireReading>(de)
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            let field = if path == "." || path.is_empty() {
                missing_field(&message).unwrap_or_default()
            } else {
                path
            };
            (field, message)
        })
        .and_then(|wire| validate(wire, now_us));
    match result {
        Ok(reading) => out.readings.push(reading),
        Err((field, message)) => {
            let id: Identity = serde_json::from_str(raw).unwrap_or_default();
            out.rejected.push(Rejection {
                index,
                lift_id: id.lift_id.and_then(|v| v.as_str().map(str::to_owned)),
                seq: id.seq.and_then(|v| v.as_u64()),
                field,
                message,
            });
        }
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

type FieldError = (String, String);

fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_string(), message.into())
}

fn in_range(field: &str, v: f64, (lo, hi): (f64, f64)) -> Result<f32, FieldError> {
    if !(lo..=hi).contains(&v) {
        return Err(field_err(
            field,
            format!("{v} is out of range ({lo} to {hi})"),
        ));
    }
    Ok(v as f32)
}

fn optional(field: &str, v: Option<f64>, range: (f64, f64)) -> Result<Option<f32>, FieldError> {
    v.map(|v| in_range(field, v, range)).transpose()
}

fn validate(w: WireReading<'_>, now_us: i64) -> Result<Reading, FieldError> {
    let lift_id = LiftId::new(&w.lift_id).map_err(|e| field_err("lift_id", e.to_string()))?;
    let ts = chrono::DateTime::parse_from_rfc3339(&w.ts).map_err(|e| {
        field_err(
            "ts",
            format!("must be RFC 3339 with an offset, e.g. 2026-11-23T10:15:00Z ({e})"),
        )
    })?;
    let ts_us = ts.timestamp_micros();
    if ts_us > now_us + MAX_FUTURE_SKEW_SECONDS * 1_000_000 {
        return Err(field_err(
            "ts",
            format!(
                "is more than {} minutes ahead of the server clock",
                MAX_FUTURE_SKEW_SECONDS / 60
            ),
        ));
    }
    if ts_us < MIN_TS_MICROS {
        return Err(field_err(
            "ts",
            "is before 2000-01-01: is the device clock set?",
        ));
    }
    if !(FLOOR.0..=FLOOR.1).contains(&w.floor) {
        return Err(field_err(
            "floor",
            format!("{} is out of range ({} to {})", w.floor, FLOOR.0, FLOOR.1),
        ));
    }
    if w.trips > TRIPS_PER_READING_MAX as u64 {
        return Err(field_err(
            "trips",
            format!(
                "{} is more than {TRIPS_PER_READING_MAX}: trips counts trips since the previous reading, not a lifetime total",
                w.trips
            ),
        ));
    }
    if w.door_cycles > DOOR_CYCLES_PER_READING_MAX as u64 {
        return Err(field_err(
            "door_cycles",
            format!(
                "{} is more than {DOOR_CYCLES_PER_READING_MAX}: door_cycles counts cycles since the previous reading",
                w.door_cycles
            ),
        ));
    }
    if w.faults.len() > FAULTS_MAX {
        return Err(field_err(
            "faults",
            format!("has {} codes, more than {FAULTS_MAX}", w.faults.len()),
        ));
    }
    let mut faults = Vec::with_capacity(w.faults.len());
    for (i, code) in w.faults.iter().enumerate() {
        let ok = !code.is_empty()
            && code.len() <= FAULT_CODE_MAX_LEN
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(field_err(
                &format!("faults[{i}]"),
                format!(
                    "fault code {code:?} must be 1-{FAULT_CODE_MAX_LEN} characters of A-Z, a-z, 0-9, '.', '_', '-'"
                ),
            ));
        }
        faults.push(code.to_string());
    }
    faults.sort_unstable();
    faults.dedup();
    if w.events.len() > EVENTS_MAX {
        return Err(field_err(
            "events",
            format!("has {} events, more than {EVENTS_MAX}", w.events.len()),
        ));
    }
    if w.extra.len() > EXTRA_MAX {
        return Err(field_err(
            "extra",
            format!("has {} metrics, more than {EXTRA_MAX}", w.extra.len()),
        ));
    }
    if let Some(key) = w.extra.keys().find(|k| {
        k.is_empty()
            || k.len() > EXTRA_KEY_MAX_LEN
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }) {
        return Err(field_err(
            &format!("extra.{key}"),
            format!("metric names must be 1-{EXTRA_KEY_MAX_LEN} characters of A-Z, a-z, 0-9, '_'"),
        ));
    }
    Ok(Reading {
        lift_id,
        epoch: w.epoch,
        seq: w.seq,
        ts_us,
        received_us: now_us,
        floor: w.floor as i16,
        direction: w.direction,
        door: w.door,
        load_kg: optional("load_kg", w.load_kg, LOAD_KG)?,
        speed_mps: optional("speed_mps", w.speed_mps, SPEED_MPS)?,
        motor_temp_c: optional("motor_temp_c", w.motor_temp_c, MOTOR_TEMP_C)?,
        vibration_mm_s: optional("vibration_mm_s", w.vibration_mm_s, VIBRATION_MM_S)?,
        trips: w.trips as u32,
        door_cycles: w.door_cycles as u32,
        faults,
        events: w.events,
        extra: w.extra,
    })
}

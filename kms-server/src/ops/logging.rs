//! Diagnostic logs (`tracing`): human text on a terminal, JSON lines otherwise (docs/logging.md).
//!
//! These logs are for operators; the audit log (`crate::audit`) is the record of calls. A log
//! line about a request is meant to run in that request's [`crate::call::request_span`], so it carries the
//! `request_id` of the request's audit record (docs/logging.md). Nothing logged here or anywhere in the server
//! may hold a secret (plaintext, data key, share, TOTP code): handlers log names, versions and
//! outcomes only (tests/tests/logging.rs greps a real run's log for the secrets it used).

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable that chooses the format when `--log-format` is absent.
pub const FORMAT_ENV: &str = "KMS_LOG_FORMAT";
/// The environment variable holding the filter (`info` by default; `tracing` directives, e.g.
/// `KMS_LOG=debug` or `KMS_LOG=info,kms_server::keystore=debug`).
pub const FILTER_ENV: &str = "KMS_LOG";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (timestamp, level, spans, target, message, fields).
    Human,
    /// One JSON object per line: always `timestamp`, `level`, `target` and `message`, then
    /// the event's fields and those of its spans (inside a request: `request_id`,
    /// `operation`).
    Json,
}

impl LogFormat {
    /// Human when stderr is a terminal, JSON lines otherwise (a file, a pipe, journald).
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Human
        } else {
            Self::Json
        }
    }
}

/// Installs the process-wide subscriber writing to stderr, in `format` (or [`LogFormat::detect`]
/// when `None`), filtered by `KMS_LOG` (`info` when unset; an invalid filter falls back to
/// `info` with a warning, rather than stopping the server).
///
/// Call once, first thing in `main`. Returns the format in use.
pub fn init(format: Option<LogFormat>) -> LogFormat {
    let format = format.unwrap_or_else(LogFormat::detect);
    let (filter, bad_filter) = match std::env::var(FILTER_ENV) {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        // Colours only for a person at a terminal (and not if NO_COLOR is set).
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .init(),
    }
    if let Some(e) = bad_filter {
        tracing::warn!(error = %e, "{FILTER_ENV} is not a valid filter; logging at info");
    }
    format
}

/// Formats an event as one flat JSON object: `timestamp` (RFC 3339, UTC), `level`, `target`,
/// `message` (empty when the event has none, as some dependencies' trace events), the event's
/// fields, then the fields of its spans, innermost first; a name already present is not
/// overwritten, so the four above always mean what they say.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = FieldMap(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let message = fields.0.remove("message").unwrap_or_else(|| "".into());
        line.insert("message".into(), message);
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                // Span fields are stored formatted by `JsonFields`: a JSON object, or empty.
                let Some(stored) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<serde_json::Value>(stored)
                {
                    for (k, v) in map {
                        line.entry(k).or_insert(v);
                    }
                }
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values (numbers and booleans kept, the rest as text).
struct FieldMap(serde_json::Map<String, serde_json::Value>);

impl Visit for FieldMap {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

//! Logs as upstream kube-proxy writes them, so that existing log pipelines
//! keep parsing them:
//!
//! - **text** (default): klog's layout,
//!   `I1205 04:02:41.123456   12345 run.rs:123] "message" key="value" n=3`:
//!   severity letter (`I`, `W`, `E`), month and day, time to the
//!   microsecond (UTC), the process ID right-aligned in 7 columns, the
//!   source file and line, the quoted message, then `err=` first and the
//!   other key/value pairs (strings quoted, numbers and booleans bare, a
//!   multi-line value as klog's `key=<` block).
//! - **json**: component-base's schema,
//!   `{"ts":1764907361123.456,"caller":"src/run.rs:123","msg":"message","v":0,"key":"value"}`:
//!   `ts` in milliseconds since the epoch, `v` (the verbosity) on
//!   everything but errors, `err` last on errors.
//!
//! Never colour codes. `-v` means what upstream's does: 0 and 1 show
//! info, warnings and errors; 2 and 3 add sync summaries and each
//! object's handling (debug); 4 and above add per-change detail (trace).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// klog's text layout.
    Text,
    /// component-base's JSON.
    Json,
}

/// A field's value, kept typed so each format renders it as upstream.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(String),
    Bool(bool),
}

#[derive(Default)]
struct Fields {
    message: String,
    error: Option<String>,
    pairs: Vec<(String, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Text(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::Number(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::Number(value.to_string()));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::Number(if value.is_finite() { value.to_string() } else { "null".into() }));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::Text(format!("{value:?}")));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let text = || match &value {
            Value::Text(t) | Value::Number(t) => t.clone(),
            Value::Bool(b) => b.to_string(),
        };
        match field.name() {
            "message" => self.message = text(),
            "error" | "err" => self.error = Some(text()),
            name => self.pairs.push((name.to_string(), value)),
        }
    }
}

/// upstream's `V` level of a tracing level.
fn verbosity(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 4,
        Level::DEBUG => 2,
        _ => 0,
    }
}

/// klog's severity letter.
fn severity(level: &Level) -> char {
    match *level {
        Level::ERROR => 'E',
        Level::WARN => 'W',
        _ => 'I',
    }
}

/// Go's `strconv.Quote`, near enough: Rust's debug form of a string.
fn quote(text: &str) -> String {
    format!("{text:?}")
}

fn text_value(out: &mut String, key: &str, value: &Value) {
    use std::fmt::Write as _;
    match value {
        Value::Text(t) if t.contains('\n') => {
            let _ = writeln!(out, " {key}=<");
            for line in t.trim_end_matches('\n').split('\n') {
                let _ = writeln!(out, "\t{line}");
            }
            out.push_str(" >");
        }
        Value::Text(t) => {
            let _ = write!(out, " {key}={}", quote(t));
        }
        Value::Number(n) => {
            let _ = write!(out, " {key}={n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, " {key}={b}");
        }
    }
}

/// One klog text line (without the newline).
fn text_line(now: std::time::SystemTime, pid: u32, file: &str, line: u32, level: &Level, fields: &Fields) -> String {
    let d = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let stamp = k8s_openapi::jiff::Timestamp::new(d.as_secs() as i64, 0)
        .map(|t| t.strftime("%m%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| "0101 00:00:00".into());
    let base = file.rsplit('/').next().unwrap_or(file);
    let mut out = format!("{}{stamp}.{:06} {pid:>7} {base}:{line}] {}", severity(level), d.subsec_micros(), quote(&fields.message));
    if let Some(e) = &fields.error {
        text_value(&mut out, "err", &Value::Text(e.clone()));
    }
    for (k, v) in &fields.pairs {
        text_value(&mut out, k, v);
    }
    out
}

/// One component-base JSON line (without the newline).
fn json_line(now: std::time::SystemTime, file: &str, line: u32, level: &Level, fields: &Fields) -> String {
    let d = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let millis = d.as_secs_f64() * 1000.0;
    let parts: Vec<&str> = file.rsplit('/').take(2).collect();
    let caller = parts.iter().rev().copied().collect::<Vec<_>>().join("/");
    let mut out = format!("{{\"ts\":{millis:.3},\"caller\":{},\"msg\":{}", json_string(&format!("{caller}:{line}")), json_string(&fields.message));
    if *level != Level::ERROR {
        out.push_str(&format!(",\"v\":{}", verbosity(level)));
    }
    for (k, v) in &fields.pairs {
        let rendered = match v {
            Value::Text(t) => json_string(t),
            Value::Number(n) => n.clone(),
            Value::Bool(b) => b.to_string(),
        };
        out.push_str(&format!(",{}:{rendered}", json_string(k)));
    }
    if let Some(e) = &fields.error {
        out.push_str(&format!(",\"err\":{}", json_string(e)));
    }
    out.push('}');
    out
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The event formatter for `tracing_subscriber::fmt`.
#[derive(Debug, Clone, Copy)]
pub struct Klog {
    /// Text or JSON.
    pub format: Format,
}

impl<S, N> FormatEvent<S, N> for Klog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let file = meta.file().unwrap_or(meta.target());
        let line = meta.line().unwrap_or(0);
        let now = std::time::SystemTime::now();
        let text = match self.format {
            Format::Text => text_line(now, std::process::id(), file, line, meta.level(), &fields),
            Format::Json => json_line(now, file, line, meta.level(), &fields),
        };
        writeln!(writer, "{text}")
    }
}


/// klog's `--vmodule` glob: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn at(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| at(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && at(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && at(&p[1..], &t[1..]),
        }
    }
    at(&p, &t)
}

/// Per-file verbosity, as klog's `--vmodule`: each `(pattern, level)`
/// raises the verbosity of the source files whose name (without `.rs`)
/// the glob matches, or whose path does when the pattern has a `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vmodule(pub Vec<(String, u32)>);

impl Vmodule {
    /// The `logging.vmodule` value of a configuration (upstream's list of
    /// `{filePattern, verbosity}`).
    pub fn from_config(value: Option<&serde_json::Value>) -> Vmodule {
        let items = value.and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        Vmodule(
            items
                .iter()
                .filter_map(|i| Some((i.get("filePattern")?.as_str()?.to_string(), u32::try_from(i.get("verbosity")?.as_u64()?).ok()?)))
                .collect(),
        )
    }

    /// The verbosity for events from `file`, if a pattern matches it.
    fn level(&self, file: &str) -> Option<u32> {
        let path = file.trim_end_matches(".rs");
        let name = path.rsplit('/').next().unwrap_or(path);
        // A path pattern matches the path or any tail of it after a `/`
        // (the crate's directory is not part of what a user types).
        let tails = || std::iter::once(path).chain(path.match_indices('/').map(|(i, _)| &path[i + 1..]));
        self.0.iter().find(|(p, _)| if p.contains('/') { tails().any(|t| glob(p, t)) } else { glob(p, name) }).map(|(_, v)| *v)
    }
}


/// How much higher a dependency's debug and trace events sit than
/// kproxy's own: its debug needs `-v=6` (where upstream's client-go starts
/// logging each request), its trace `-v=8`.
const DEPENDENCY_EXTRA: u32 = 4;

/// Whether an event at `level` from `file`, logged by the module `target`,
/// is logged at `verbosity` with `vmodule`. kproxy's own debug lines (a
/// sync summary, say) show from `-v=2`; the HTTP, TLS and runtime crates'
/// from `-v=6`.
fn enabled(level: &Level, file: Option<&str>, target: &str, verbosity: u32, vmodule: &Vmodule) -> bool {
    let wanted = file.and_then(|f| vmodule.level(f)).unwrap_or(verbosity);
    let v = u32::from(self::verbosity(level));
    let own = target.starts_with("kproxy");
    let v = if own || v == 0 { v } else { v + DEPENDENCY_EXTRA };
    v <= wanted
}

/// Installs the global logger on stderr. `RUST_LOG`, when set, overrides
/// the levels.
pub fn init(format: Format, verbosity: u32, vmodule: Vmodule) {
    let builder = tracing_subscriber::fmt().with_ansi(false).event_format(Klog { format }).with_writer(std::io::stderr);
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        builder.with_env_filter(filter).init();
        return;
    }
    let most = vmodule.0.iter().map(|(_, v)| *v).max().unwrap_or(0).max(verbosity);
    let max = tracing_subscriber::filter::LevelFilter::from_level(match most {
        0..=1 => Level::INFO,
        2..=3 => Level::DEBUG,
        _ => Level::TRACE,
    });
    // kube's client logs every failed request at error level; kproxy's own
    // warnings already say what failed and that it retries.
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        !meta.target().starts_with("kube_client") && enabled(meta.level(), meta.file(), meta.target(), verbosity, &vmodule)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    builder.with_max_level(max).finish().with(filter).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn fields(message: &str, error: Option<&str>, pairs: &[(&str, Value)]) -> Fields {
        Fields { message: message.into(), error: error.map(String::from), pairs: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    const AT: Duration = Duration::from_micros(1_764_907_361_123_456);

    #[test]
    fn text_lines_are_klog_s() {
        let f = fields("Using iptables proxy", None, &[("node", Value::Text("node-a".into())), ("count", Value::Number("3".into()))]);
        assert_eq!(
            text_line(UNIX_EPOCH + AT, 12345, "kproxy-bin/src/run.rs", 42, &Level::INFO, &f),
            "I1205 04:02:41.123456   12345 run.rs:42] \"Using iptables proxy\" node=\"node-a\" count=3"
        );
        let f = fields("Healthz server failed", Some("address in use"), &[("address", Value::Text("0.0.0.0:10256".into()))]);
        assert_eq!(
            text_line(UNIX_EPOCH + AT, 1, "src/servers.rs", 7, &Level::ERROR, &f),
            "E1205 04:02:41.123456       1 servers.rs:7] \"Healthz server failed\" err=\"address in use\" address=\"0.0.0.0:10256\""
        );
        let f = fields("rules", None, &[("data", Value::Text("a\nb\n".into()))]);
        assert!(text_line(UNIX_EPOCH + AT, 1, "x.rs", 1, &Level::WARN, &f).ends_with("] \"rules\" data=<\n\ta\n\tb\n >"));
    }

    #[test]
    fn vmodule_raises_the_verbosity_of_the_files_it_names() {
        let v = Vmodule(vec![("observer".into(), 2), ("*proxier*".into(), 4), ("src/watch*".into(), 4)]);
        assert!(!enabled(&Level::DEBUG, Some("kproxy-bin/src/run.rs"), "kproxy_bin", 0, &v), "-v=0 elsewhere");
        assert!(enabled(&Level::INFO, Some("kproxy-bin/src/run.rs"), "kproxy_bin", 0, &v));
        assert!(enabled(&Level::DEBUG, Some("kproxy-bin/src/observer.rs"), "kproxy_bin", 0, &v), "observer=2");
        assert!(!enabled(&Level::TRACE, Some("kproxy-bin/src/observer.rs"), "kproxy_bin", 0, &v));
        assert!(enabled(&Level::TRACE, Some("kproxy-backend-nft/src/proxier.rs"), "kproxy_bin", 0, &v), "a glob");
        assert!(enabled(&Level::TRACE, Some("kproxy-bin/src/watch.rs"), "kproxy_bin", 0, &v), "a path pattern");
        assert!(enabled(&Level::DEBUG, Some("kproxy-bin/src/run.rs"), "kproxy_bin", 2, &Vmodule::default()), "-v=2 everywhere");
        let hyper = Some("/root/.cargo/registry/src/x/hyper-util/src/client/legacy/pool.rs");
        assert!(!enabled(&Level::DEBUG, hyper, "hyper_util::client::legacy::pool", 2, &Vmodule::default()), "a dependency's debug: not at -v=2");
        assert!(enabled(&Level::DEBUG, hyper, "hyper_util::client::legacy::pool", 6, &Vmodule::default()), "a dependency's debug at -v=6");
        assert!(!enabled(&Level::TRACE, hyper, "hyper_util::client::legacy::pool", 6, &Vmodule::default()));
        assert!(enabled(&Level::WARN, hyper, "hyper_util::client::legacy::pool", 0, &Vmodule::default()), "its warnings always");
        let from_config = Vmodule::from_config(Some(&serde_json::json!([{"filePattern": "observer", "verbosity": 2}])));
        assert_eq!(from_config, Vmodule(vec![("observer".into(), 2)]));
    }

    #[test]
    fn json_lines_are_component_base_s() {
        let f = fields("Sync done", None, &[("ok", Value::Bool(true))]);
        let line = json_line(UNIX_EPOCH + AT, "kproxy-bin/src/observer.rs", 9, &Level::DEBUG, &f);
        assert_eq!(line, r#"{"ts":1764907361123.456,"caller":"src/observer.rs:9","msg":"Sync done","v":2,"ok":true}"#);
        let f = fields("Healthz server failed", Some("in use"), &[]);
        let line = json_line(UNIX_EPOCH + AT, "src/servers.rs", 7, &Level::ERROR, &f);
        assert_eq!(line, r#"{"ts":1764907361123.456,"caller":"src/servers.rs:7","msg":"Healthz server failed","err":"in use"}"#);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(parsed.get("v").is_none(), "errors carry no v");
    }
}

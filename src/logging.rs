//! Logging: `tracing` to stderr as text (for people) or JSON (one object per line, for log
//! shippers: `--log-format json`), and a progress bar that log lines never print over.
//!
//! While a progress bar is on the terminal ([`set_bar`]), every log line is written with the bar
//! suspended — cleared, the line printed, the bar drawn again below it — so neither garbles the
//! other and no stale copy of the bar is left above the log.

use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The format chosen at start-up (progress lines follow it: plain text, or JSON log events).
static FORMAT: Mutex<LogFormat> = Mutex::new(LogFormat::Text);

/// The progress bar on the terminal, if one is shown.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The log format in use.
pub fn format() -> LogFormat {
    FORMAT.lock().map(|f| *f).unwrap_or_default()
}

/// Shows `bar` as the one progress bar that log lines print around; `None` when it is gone.
pub fn set_bar(bar: Option<ProgressBar>) {
    if let Ok(mut b) = BAR.lock() {
        *b = bar;
    }
}

/// Installs the subscriber; `filter` is a level or a tracing directive (an invalid one falls back
/// to `info`).
/// Levels a directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `--log`: a level, or tracing directives (`walrelay_client=debug,info`). A word that is neither a
/// level nor a target of walrelay's is refused: the filter would take it for a target and keep
/// every line out (`--log warnn` showed nothing, not even warnings).
pub fn parse_filter(text: &str) -> Result<String, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err("empty; give a level: error, warn, info, debug or trace".into());
    }
    for d in directives.iter().filter(|d| !d.is_empty()) {
        let level = match d.rsplit_once('=') {
            Some((_, level)) => level,
            None if d.starts_with("walrelay") || d.contains("::") || d.contains('[') => continue,
            None => d,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} is not a log level: use error, warn, info, debug or trace (or TARGET=LEVEL)"
            ));
        }
    }
    EnvFilter::try_new(text).map_err(|e| format!("not a log filter: {e}"))?;
    Ok(text.to_string())
}

pub fn init(filter: &str, format: LogFormat) {
    if let Ok(mut f) = FORMAT.lock() {
        *f = format;
    }
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // object_store logs every retry at info; walrelay reports what failed once, where it is
    // handled (a filter naming object_store itself decides otherwise).
    if !filter.to_string().contains("object_store") {
        if let Ok(quiet) = "object_store=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// stderr, with the progress bar suspended for each write.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over one whole event per call.
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) if !bar.is_hidden() => bar.suspend(|| io::stderr().write_all(buf))?,
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

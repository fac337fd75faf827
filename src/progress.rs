//! `bootstrap`'s progress: a bar on a terminal, plain periodic lines elsewhere.
//!
//! * stderr is a terminal: a one-line display redrawn in place (shown unless stderr is not a
//!   terminal; log lines print around it, see [`crate::logging`]);
//! * `-P` and stderr is not a terminal (nohup, cron, `ssh` without `-t`, `| tee`, CI): a line every
//!   [`LINE_INTERVAL`] and one per phase, like pg_basebackup's `11812/198114 kB (5%)` lines — or,
//!   with `--log-format json`, the same as log events;
//! * neither: nothing.
//!
//! Sizes are PostgreSQL's units (kB, MB, GB of 1024), as in pg_basebackup and in the summary line.
//! During the checkpoint nothing is copied yet, so the display says what it waits for (and how to
//! not wait: `-c fast`) instead of showing an empty bar.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use walrelay_basebackup::{BackupPhase, BackupProgress};
use walrelay_protocol::command::CheckpointMode;

use crate::bootstrap::human_bytes;
use crate::logging::{self, LogFormat};

/// Between two progress lines when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);
/// Between two redraws of the terminal display.
const BAR_INTERVAL: Duration = Duration::from_millis(200);
/// Width of the drawn bar, in characters.
const BAR_WIDTH: usize = 30;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Off,
    /// Redrawn in place on a terminal.
    Bar,
    /// Periodic lines (a file, a pipe, a journal).
    Lines,
}

impl Display {
    /// `-P` forces progress; without it, progress shows on a terminal only.
    pub fn choose(forced: bool, stderr_is_terminal: bool) -> Display {
        match (forced, stderr_is_terminal) {
            (_, true) => Display::Bar,
            (true, false) => Display::Lines,
            (false, false) => Display::Off,
        }
    }
}

/// What the job is doing, in words, at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moment {
    pub phase: BackupPhase,
    pub done: u64,
    pub total: Option<u64>,
    /// Time spent in this phase.
    pub in_phase: Duration,
    /// Bytes per second since the copy began.
    pub rate: Option<f64>,
    pub checkpoint: CheckpointMode,
}

impl Moment {
    fn percent(&self) -> Option<u64> {
        self.total
            .filter(|&t| t > 0)
            .map(|t| (self.done.saturating_mul(100) / t).min(100))
    }

    /// The copy's numbers as pg_basebackup prints them: `11812/198114 kB (5%)`.
    pub fn kb_line(&self) -> String {
        let done_kb = self.done / 1024;
        match (self.total, self.percent()) {
            (Some(t), Some(p)) => format!("{done_kb}/{} kB ({p}%)", t.max(self.done) / 1024),
            _ => format!("{done_kb} kB"),
        }
    }

    /// One line for a log or a terminal; `bar` adds a drawn bar for the terminal.
    pub fn describe(&self, bar: bool) -> String {
        let secs = self.in_phase.as_secs();
        match self.phase {
            BackupPhase::Connecting => "connecting to the primary".to_string(),
            BackupPhase::Checkpoint => match self.checkpoint {
                CheckpointMode::Spread => format!(
                    "waiting for checkpoint ({secs} s; a spread checkpoint takes as long as the server's checkpoint_completion_target allows — use -c fast to start now)"
                ),
                CheckpointMode::Fast => format!("waiting for checkpoint ({secs} s)"),
            },
            BackupPhase::Transferring => {
                let mut s = String::new();
                if bar {
                    let filled = self.percent().map_or(0, |p| p as usize * BAR_WIDTH / 100);
                    s.push('[');
                    s.push_str(&"=".repeat(filled));
                    s.push_str(&" ".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)));
                    s.push_str("] ");
                }
                match self.total {
                    Some(t) => s.push_str(&format!(
                        "copied {} of {}",
                        human_bytes(self.done),
                        human_bytes(t.max(self.done))
                    )),
                    None => s.push_str(&format!("copied {}", human_bytes(self.done))),
                }
                if let Some(p) = self.percent() {
                    s.push_str(&format!(" ({p}%)"));
                }
                if let Some(rate) = self.rate.filter(|r| *r >= 1.0) {
                    s.push_str(&format!(", {}/s", human_bytes(rate as u64)));
                    if let Some(t) = self.total.filter(|&t| t > self.done) {
                        let left = ((t - self.done) as f64 / rate).ceil() as u64;
                        s.push_str(&format!(", about {left} s left"));
                    }
                }
                s
            }
            BackupPhase::Finishing => {
                "data copied; waiting for the WAL up to the backup's end, verifying".to_string()
            }
            BackupPhase::Syncing => "syncing the data directory to disk".to_string(),
            BackupPhase::Done => format!("done: {} copied", human_bytes(self.done)),
        }
    }
}

/// Reads the counters and remembers when each phase began.
struct Clock {
    progress: BackupProgress,
    checkpoint: CheckpointMode,
    phase: BackupPhase,
    since: Instant,
    copy_began: Option<(Instant, u64)>,
}

impl Clock {
    fn new(progress: BackupProgress, checkpoint: CheckpointMode) -> Self {
        Clock {
            phase: progress.phase(),
            progress,
            checkpoint,
            since: Instant::now(),
            copy_began: None,
        }
    }

    /// The moment now, and whether the phase changed since the last call.
    fn read(&mut self) -> (Moment, bool) {
        let phase = self.progress.phase();
        let changed = phase != self.phase;
        if changed {
            self.phase = phase;
            self.since = Instant::now();
        }
        let done = self.progress.done_bytes();
        if phase == BackupPhase::Transferring && self.copy_began.is_none() {
            self.copy_began = Some((Instant::now(), done));
        }
        let rate = self.copy_began.and_then(|(t, d0)| {
            let secs = t.elapsed().as_secs_f64();
            (secs >= 1.0).then(|| done.saturating_sub(d0) as f64 / secs)
        });
        let moment = Moment {
            phase,
            done,
            total: self.progress.total_bytes(),
            in_phase: self.since.elapsed(),
            rate,
            checkpoint: self.checkpoint,
        };
        (moment, changed)
    }
}

/// A running progress display; [`Reporter::finish`] ends it.
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
    clock: Option<Clock>,
}

impl Reporter {
    /// Starts showing `progress` as `display` says (nothing for [`Display::Off`]).
    pub fn start(
        display: Display,
        progress: BackupProgress,
        checkpoint: CheckpointMode,
    ) -> Option<Reporter> {
        match display {
            Display::Off => None,
            Display::Bar => {
                let bar = ProgressBar::new_spinner();
                if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                    bar.set_style(style);
                }
                logging::set_bar(Some(bar.clone()));
                let b = bar.clone();
                let mut clock = Clock::new(progress, checkpoint);
                let task = tokio::spawn(async move {
                    loop {
                        let (m, _) = clock.read();
                        b.set_message(m.describe(true));
                        b.tick();
                        tokio::time::sleep(BAR_INTERVAL).await;
                    }
                });
                Some(Reporter {
                    task,
                    bar: Some(bar),
                    clock: None,
                })
            }
            Display::Lines => {
                let mut clock = Clock::new(progress.clone(), checkpoint);
                let task = tokio::spawn(async move {
                    let mut last_line = Instant::now();
                    let mut first = true;
                    loop {
                        let (m, changed) = clock.read();
                        // A line when the phase changes and every interval; the connection is
                        // usually too short to mention.
                        let due = last_line.elapsed() >= LINE_INTERVAL;
                        if (changed || first || due) && m.phase != BackupPhase::Connecting {
                            emit_line(&m);
                            last_line = Instant::now();
                            first = false;
                        }
                        tokio::time::sleep(BAR_INTERVAL).await;
                    }
                });
                Some(Reporter {
                    task,
                    bar: None,
                    clock: Some(Clock::new(progress, checkpoint)),
                })
            }
        }
    }

    /// Ends the display: the bar is cleared (no stale copy stays on the terminal), and progress
    /// lines end with the final count when the job succeeded.
    pub fn finish(self, succeeded: bool) {
        self.task.abort();
        if let Some(bar) = self.bar {
            logging::set_bar(None);
            bar.finish_and_clear();
        }
        if let (Some(mut clock), true) = (self.clock, succeeded) {
            let (mut m, _) = clock.read();
            m.phase = BackupPhase::Done;
            if let Some(t) = m.total {
                m.total = Some(t.max(m.done));
            }
            emit_line(&m);
        }
    }
}

/// One progress line: plain text, or a log event in JSON mode.
fn emit_line(m: &Moment) {
    match logging::format() {
        LogFormat::Json => tracing::info!(
            phase = ?m.phase,
            done_kb = m.done / 1024,
            total_kb = m.total.map(|t| t / 1024),
            "{}",
            m.describe(false)
        ),
        LogFormat::Text => match m.phase {
            BackupPhase::Transferring | BackupPhase::Done => {
                eprintln!("walrelay: {} — {}", m.kb_line(), m.describe(false))
            }
            _ => eprintln!("walrelay: {}", m.describe(false)),
        },
    }
}

/// Whether stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(phase: BackupPhase, done: u64, total: Option<u64>) -> Moment {
        Moment {
            phase,
            done,
            total,
            in_phase: Duration::from_secs(12),
            rate: Some(2.0 * 1024.0 * 1024.0),
            checkpoint: CheckpointMode::Spread,
        }
    }

    #[test]
    fn progress_is_forced_by_p_and_shown_on_terminals() {
        assert_eq!(Display::choose(true, false), Display::Lines);
        assert_eq!(Display::choose(false, false), Display::Off);
        assert_eq!(Display::choose(false, true), Display::Bar);
        assert_eq!(Display::choose(true, true), Display::Bar);
    }

    #[test]
    fn the_checkpoint_wait_says_what_it_waits_for() {
        let m = moment(BackupPhase::Checkpoint, 0, None);
        let text = m.describe(true);
        assert!(text.starts_with("waiting for checkpoint (12 s"), "{text}");
        assert!(text.contains("-c fast"), "{text}");
        assert!(!text.contains('['), "no empty bar: {text}");
        let fast = Moment {
            checkpoint: CheckpointMode::Fast,
            ..m
        };
        assert!(!fast.describe(true).contains("-c fast"));
    }

    #[test]
    fn the_copy_uses_the_summarys_units() {
        let m = moment(BackupPhase::Transferring, 23 << 20, Some(46 << 20));
        assert_eq!(m.kb_line(), "23552/47104 kB (50%)");
        let text = m.describe(true);
        assert!(
            text.starts_with(
                "[===============               ] copied 23.0 MB of 46.0 MB (50%), 2.0 MB/s"
            ),
            "{text}"
        );
        assert!(text.contains("about 12 s left"), "{text}");
        // The server's estimate can be exceeded: never more than 100%.
        let over = moment(BackupPhase::Transferring, 50 << 20, Some(46 << 20));
        assert!(
            over.describe(false).contains("(100%)"),
            "{}",
            over.describe(false)
        );
        assert_eq!(over.kb_line(), "51200/51200 kB (100%)");
    }
}

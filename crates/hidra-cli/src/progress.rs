//! Progress of a migration run (or an adoption's split, an export, an
//! import) on standard error: a bar with rate and ETA on
//! a terminal, plain lines (at most about one a second) otherwise.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hidra::migrate::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often plain progress lines are written at most.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a run stands.
struct Step {
    done: usize,
    total: usize,
    failed: usize,
}

/// Reports the progress of one run.
#[derive(Clone, Debug)]
pub(crate) struct Reporter {
    inner: Arc<Inner>,
    /// What is being done (`migrating`) and to what (`schemas`).
    labels: (&'static str, &'static str),
}

#[derive(Debug)]
enum Inner {
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

#[derive(Debug)]
struct Lines {
    started: Instant,
    last: Option<Instant>,
}

impl Inner {
    /// A bar styled by `style` when standard error is a terminal, else
    /// plain lines.
    fn new(style: impl FnOnce() -> ProgressStyle, length: Option<u64>) -> Inner {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr())
                .with_style(style().progress_chars("=> "));
            Inner::Bar(bar)
        } else {
            Inner::Lines(Mutex::new(Lines {
                started: Instant::now(),
                last: None,
            }))
        }
    }
}

impl Lines {
    /// Whether a line is due (the last one always is): the seconds since
    /// the start if so.
    fn due(lines: &Mutex<Lines>, last_one: bool) -> Option<f64> {
        let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let due = last_one
            || lines
                .last
                .is_none_or(|at| now.duration_since(at) >= LINE_INTERVAL);
        if !due {
            return None;
        }
        lines.last = Some(now);
        Some(now.duration_since(lines.started).as_secs_f64())
    }
}

impl Reporter {
    /// A bar when standard error is a terminal, else plain lines.
    pub(crate) fn new() -> Self {
        Self::labeled("migrating", "schemas")
    }

    /// [`Reporter::new`] for another kind of work: `verb` (`splitting`) on
    /// `unit` (`tenants`).
    pub(crate) fn labeled(verb: &'static str, unit: &'static str) -> Self {
        let style = || {
            ProgressStyle::with_template(&format!(
                "{{spinner}} {verb} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit}  {{rate}}  ETA {{eta}}  {{msg}}",
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
        };
        Reporter {
            inner: Arc::new(Inner::new(style, Some(0))),
            labels: (verb, unit),
        }
    }

    /// The callback for [`MigrationRunner::on_progress`](hidra::MigrationRunner::on_progress).
    pub(crate) fn callback(&self) -> impl Fn(&Progress) + Send + Sync + 'static {
        let this = self.clone();
        move |p| this.update(p)
    }

    fn update(&self, p: &Progress) {
        self.step(p.done, p.total, p.failed);
    }

    /// `done` of `total` finished, `failed` of them failed.
    pub(crate) fn step(&self, done: usize, total: usize, failed: usize) {
        let p = Step {
            done,
            total,
            failed,
        };
        match &*self.inner {
            Inner::Bar(bar) => {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                if p.failed > 0 {
                    bar.set_message(format!("{} failed", p.failed));
                }
            }
            Inner::Lines(lines) => {
                let Some(elapsed) = Lines::due(lines, p.done == p.total) else {
                    return;
                };
                let rate = if elapsed > 0.0 {
                    p.done as f64 / elapsed
                } else {
                    0.0
                };
                let eta = if rate > 0.0 {
                    format!(", ETA {:.0} s", (p.total - p.done) as f64 / rate)
                } else {
                    String::new()
                };
                let (verb, unit) = self.labels;
                let _ = writeln!(
                    std::io::stderr(),
                    "{verb}: {}/{} {unit}, {} failed, {rate:.1}/s{eta}",
                    p.done,
                    p.total,
                    p.failed
                );
            }
        }
    }

    /// Removes the bar, if any, before the summary is printed.
    pub(crate) fn finish(&self) {
        if let Inner::Bar(bar) = &*self.inner {
            bar.finish_and_clear();
        }
    }
}

/// Reports the progress of a tenant export or import: a bar over the rows
/// when their total is known (an import), else a spinner with the tables,
/// rows and bytes so far; plain lines (at most about one a second) when
/// standard error is not a terminal.
#[derive(Clone, Debug)]
pub(crate) struct ArchiveReporter {
    verb: &'static str,
    inner: Arc<Inner>,
}

impl ArchiveReporter {
    /// `verb` says what is done: "exporting", "importing".
    pub(crate) fn new(verb: &'static str) -> Self {
        let style = || {
            let template = format!(
                "{{spinner}} {verb} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} rows  {{msg}}"
            );
            ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        ArchiveReporter {
            verb,
            inner: Arc::new(Inner::new(style, None)),
        }
    }

    /// The callback for `ExportOptions::on_progress` and
    /// `ImportOptions::on_progress`.
    pub(crate) fn callback(&self) -> impl Fn(&hidra::archive::Progress) + Send + Sync + 'static {
        let this = self.clone();
        move |p| this.update(p)
    }

    fn update(&self, p: &hidra::archive::Progress) {
        let what = format!(
            "table {} ({}/{}), {:.1} MiB",
            p.table,
            p.tables_done,
            p.tables,
            p.bytes as f64 / (1 << 20) as f64
        );
        match &*self.inner {
            Inner::Bar(bar) => {
                if let Some(total) = p.total_rows {
                    bar.set_length(total);
                }
                bar.set_position(p.rows);
                bar.set_message(what);
            }
            Inner::Lines(lines) => {
                if Lines::due(lines, p.tables_done == p.tables).is_none() {
                    return;
                }
                let total = p.total_rows.map(|t| format!("/{t}")).unwrap_or_default();
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: {}{total} rows, {what}",
                    self.verb,
                    p.rows
                );
            }
        }
    }

    /// Removes the bar, if any, before the summary is printed.
    pub(crate) fn finish(&self) {
        if let Inner::Bar(bar) = &*self.inner {
            bar.finish_and_clear();
        }
    }
}

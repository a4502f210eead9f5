//! Progress of a migration run (or an adoption's split) on standard error: a bar with rate and ETA on
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

impl Reporter {
    /// A bar when standard error is a terminal, else plain lines.
    pub(crate) fn new() -> Self {
        Self::labeled("migrating", "schemas")
    }

    /// [`Reporter::new`] for another kind of work: `verb` (`splitting`) on
    /// `unit` (`tenants`).
    pub(crate) fn labeled(verb: &'static str, unit: &'static str) -> Self {
        let inner = if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(&format!(
                "{{spinner}} {verb} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit}  {{rate}}  ETA {{eta}}  {{msg}}",
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
                .with_style(style);
            Inner::Bar(bar)
        } else {
            Inner::Lines(Mutex::new(Lines {
                started: Instant::now(),
                last: None,
            }))
        };
        Reporter {
            inner: Arc::new(inner),
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
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                let due = p.done == p.total
                    || lines
                        .last
                        .is_none_or(|at| now.duration_since(at) >= LINE_INTERVAL);
                if !due {
                    return;
                }
                lines.last = Some(now);
                let elapsed = now.duration_since(lines.started).as_secs_f64();
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

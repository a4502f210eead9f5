//! Shared pieces of the Hidra benchmark binaries: locating the reference
//! schema, timing, percentiles, process memory.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Reads a file of the workspace's `bench/` (the reference tenant schema and
/// migration, copies of the shared `../shared/bench/`) unless `path` is given.
pub fn read_reference(path: Option<PathBuf>, file: &str) -> anyhow::Result<String> {
    let path = path.unwrap_or_else(|| workspace_root().join("bench").join(file));
    std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// Splits a plain SQL script (no dollar quoting) into its statements.
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `p`-th percentile (0–100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Rate per second of `n` items in `elapsed`.
pub fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `RssAnon`,
/// `VmHWM`, …), in KiB; `None` if the process or the field does not exist.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// CPU time so far, in clock ticks (`USER_HZ`, 100 per second on Linux):
/// this process's (user + system), and the whole machine's busy and total
/// (every CPU, from `/proc/stat`). `None` off Linux.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    /// This process, user and system.
    pub process: u64,
    /// Every CPU, not idle (nor waiting for I/O).
    pub busy: u64,
    /// Every CPU, all states.
    pub total: u64,
}

impl CpuTicks {
    /// The counters now.
    pub fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), from field 3.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let process = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = machine
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4)?;
        Some(CpuTicks {
            process,
            busy: total - idle,
            total,
        })
    }

    /// The ticks from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuTicks) -> CpuTicks {
        CpuTicks {
            process: self.process.saturating_sub(earlier.process),
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// The ticks over the window `from..until`, counted by a task of its own
    /// while the measured work runs (`None` off Linux).
    pub fn over(from: Instant, until: Instant) -> tokio::task::JoinHandle<Option<CpuTicks>> {
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let start = CpuTicks::now();
            tokio::time::sleep_until(until.into()).await;
            start.zip(CpuTicks::now()).map(|(a, b)| b.since(&a))
        })
    }

    /// CPU µs per operation over `ops` operations: this process's, and the
    /// whole machine's (the database and the kernel too).
    pub fn micros_per(&self, ops: usize) -> (f64, f64) {
        // Clock ticks are 10 ms (USER_HZ = 100).
        let per = |ticks: u64| ticks as f64 * 10_000.0 / ops.max(1) as f64;
        (per(self.process), per(self.busy))
    }
}

/// Runs `f(i)` for `i` in `0..n` on `concurrency` tasks; returns the results
/// in order of `i` and the time it all took.
pub async fn fan_out<T, F, Fut>(
    n: usize,
    concurrency: usize,
    f: F,
) -> anyhow::Result<(Vec<T>, Duration)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1).min(n.max(1)) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push((i, f(i).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(out) => all.extend(out),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = t0.elapsed();
    if let Some(e) = first_error {
        return Err(e);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, t)| t).collect(), elapsed))
}

/// Runs `job(conn, i)` for `i` in `0..n` over `conns` plain connections to
/// `url`, each worker taking the next `i`; returns the time the jobs took
/// (connecting is not counted).
pub async fn per_connection<F>(
    url: &str,
    conns: usize,
    n: usize,
    job: F,
) -> anyhow::Result<Duration>
where
    F: for<'c> Fn(&'c mut PgConnection, usize) -> BoxFuture<'c, anyhow::Result<()>>
        + Send
        + Sync
        + 'static,
{
    let mut connections = Vec::new();
    for _ in 0..conns.max(1) {
        connections.push(PgConnection::connect(url).await?);
    }
    let (job, next) = (Arc::new(job), Arc::new(AtomicUsize::new(0)));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in connections {
        let (job, next) = (job.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                job(&mut conn, i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let s = statements(
            "-- header; with semicolon\nCREATE TABLE a (x int); -- tail\n\nCREATE VIEW v AS SELECT 1;\n",
        );
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x int)", "CREATE VIEW v AS SELECT 1"]
        );
    }

    #[test]
    fn percentiles() {
        let d: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&d, 99.0), Duration::from_millis(99));
    }

    #[test]
    fn reads_cpu_ticks() {
        let a = CpuTicks::now().expect("Linux");
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(started.elapsed());
        }
        let d = CpuTicks::now().unwrap().since(&a);
        assert!(
            d.process >= 1 && d.busy >= d.process.min(d.busy) && d.total >= d.busy,
            "{d:?}"
        );
    }

    #[test]
    fn reads_own_memory() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert_eq!(proc_status_kib(pid, "NoSuchField"), None);
    }

    /// The workspace keeps copies of the reference files so that a checkout
    /// builds and tests alone; they must stay identical to the shared
    /// originals (checked where those exist) and to the demo's first tenant
    /// migration.
    #[test]
    fn reference_copies_are_identical() {
        for file in ["reference_schema.sql", "reference_migration.sql"] {
            let copy = read_reference(None, file).unwrap();
            let original = workspace_root().join("../shared/bench").join(file);
            if let Ok(original) = std::fs::read_to_string(&original) {
                assert_eq!(
                    copy, original,
                    "bench/{file} differs from ../shared/bench/{file}"
                );
            }
        }
        let demo =
            workspace_root().join("crates/hidra-demo/migrations/tenant/0001_reference_schema.sql");
        assert_eq!(
            std::fs::read_to_string(demo).unwrap(),
            read_reference(None, "reference_schema.sql").unwrap(),
            "the demo's first tenant migration is the reference schema"
        );
    }
}

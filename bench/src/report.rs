//! The bench's results: a table for people, JSON for tracking over time
//! (`latest.json`, and one line per run appended to `history.jsonl`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
pub use localenv::text::thousands;
use ponix_writer::config::Config;
use ponix_writer::sample;
use prost::Message as _;
use serde_json::json;

use crate::Args;
use crate::writer::{Drain, Latency, VISIBILITY_POLL};

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub items: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn new(items: u64, elapsed: Duration) -> Rate {
        Rate { items, elapsed }
    }

    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub struct Report {
    messages: u64,
    payload: &'static str,
    pub envelope_bytes: usize,
    commit: String,
    latency_rate: u64,
    latency_seconds: u64,
    batch_size: usize,
    insert_concurrency: usize,
    knobs: Vec<(&'static str, String)>,
    /// CPU time of the servers (and of the bench itself) during each measured phase.
    pub cpu: Vec<(&'static str, CpuSpent)>,
    pub publish: Option<Rate>,
    pub consume_ceiling: Option<Rate>,
    pub insert_ceiling: Option<Rate>,
    pub drain: Option<Drain>,
    pub latency: Option<Latency>,
}

impl Report {
    pub fn new(args: &Args, config: &Config) -> Report {
        let envelope_bytes = sample::envelope(args.payload, 0).encoded_len();
        let nats = &config.nats;
        Report {
            messages: args.messages,
            payload: args.payload.name(),
            envelope_bytes,
            commit: args.commit.clone(),
            latency_rate: args.latency_rate,
            latency_seconds: args.latency_seconds,
            batch_size: nats.batch_size,
            insert_concurrency: config.clickhouse.insert_concurrency,
            knobs: vec![
                ("PONIX_NATS_BATCH_SIZE", nats.batch_size.to_string()),
                (
                    "PONIX_NATS_BATCH_MAX_BYTES",
                    nats.batch_max_bytes.to_string(),
                ),
                (
                    "PONIX_NATS_BATCH_WAIT_SECS",
                    nats.batch_wait.as_secs_f64().to_string(),
                ),
                (
                    "PONIX_NATS_MAX_ACK_PENDING",
                    nats.max_ack_pending.to_string(),
                ),
                (
                    "PONIX_CLICKHOUSE_INSERT_CONCURRENCY",
                    config.clickhouse.insert_concurrency.to_string(),
                ),
                (
                    "PONIX_CLICKHOUSE_ASYNC_INSERT",
                    config.clickhouse.async_insert.to_string(),
                ),
            ],
            cpu: Vec::new(),
            publish: None,
            consume_ceiling: None,
            insert_ceiling: None,
            drain: None,
            latency: None,
        }
    }

    /// The lower of the two ceilings, and which one it is.
    fn lower_ceiling(&self) -> Option<(&'static str, f64)> {
        let consume = self.consume_ceiling?.per_second();
        let insert = self.insert_ceiling?.per_second();
        Some(if consume <= insert {
            ("JetStream", consume)
        } else {
            ("ClickHouse", insert)
        })
    }

    fn ratio(&self) -> Option<f64> {
        let (_, lower) = self.lower_ceiling()?;
        Some(self.drain.as_ref()?.rate.per_second() / lower)
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let rate = |r: &Rate| {
            format!(
                "{}/s ({:.1} s)",
                thousands(r.per_second() as u64),
                r.elapsed.as_secs_f64()
            )
        };
        if let Some(publish) = &self.publish {
            rows.push(("publish (backlog)".into(), rate(publish)));
        }
        if let Some(consume) = &self.consume_ceiling {
            rows.push(("ceiling: JetStream fetch + ack".into(), rate(consume)));
        }
        if let Some(insert) = &self.insert_ceiling {
            rows.push(("ceiling: ClickHouse insert".into(), rate(insert)));
        }
        if let Some(drain) = &self.drain {
            rows.push(("writer: drain, rows/s".into(), rate(&drain.rate)));
            if let (Some((which, _)), Some(ratio)) = (self.lower_ceiling(), self.ratio()) {
                rows.push((
                    format!("writer / lower ceiling ({which})"),
                    format!("{ratio:.2}"),
                ));
            }
            rows.push((
                "writer: start until ready".into(),
                format!("{:.2} s", drain.ready.as_secs_f64()),
            ));
            rows.push((
                "writer: CPU, peak RSS (drain)".into(),
                drain.usage.to_string(),
            ));
        }
        if let Some(latency) = &self.latency {
            rows.push((
                format!(
                    "latency at {}/s for {} s: p50 / p99 / max",
                    thousands(self.latency_rate),
                    self.latency_seconds
                ),
                format!(
                    "{} / {} / {} ms",
                    latency.p50.as_millis(),
                    latency.p99.as_millis(),
                    latency.max.as_millis()
                ),
            ));
            rows.push((
                "latency phase: published, achieved rate".into(),
                format!(
                    "{}, {}/s",
                    thousands(latency.published),
                    thousands(latency.publish_rate as u64)
                ),
            ));
            rows.push((
                "writer: CPU, peak RSS (latency)".into(),
                latency.usage.to_string(),
            ));
        }
        for (phase, spent) in &self.cpu {
            rows.push((
                format!("CPU s during {phase}: nats-server / ClickHouse / bench"),
                spent.to_string(),
            ));
        }
        let title = format!(
            "{} {} envelopes ({} B), batch size {}, insert concurrency {}",
            thousands(self.messages),
            self.payload,
            self.envelope_bytes,
            self.batch_size,
            self.insert_concurrency
        );
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(11);
        let value_width = rows
            .iter()
            .map(|(_, v)| v.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = format!(
            "{title}\n\n| {:width$} | {:value_width$} |\n",
            "measurement", "figure"
        );
        out.push_str(&format!(
            "|{}|{}|\n",
            "-".repeat(width + 2),
            "-".repeat(value_width + 2)
        ));
        for (key, value) in rows {
            out.push_str(&format!("| {key:width$} | {value:value_width$} |\n"));
        }
        out
    }

    /// One line: the end-to-end rate, its ratio to the lower ceiling, the p99.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(drain) = &self.drain {
            parts.push(format!(
                "{} rows drained at {}/s",
                thousands(drain.rate.items),
                thousands(drain.rate.per_second() as u64)
            ));
        }
        if let (Some((which, _)), Some(ratio)) = (self.lower_ceiling(), self.ratio()) {
            parts.push(format!("{ratio:.2} × the {which} ceiling"));
        }
        if let Some(latency) = &self.latency {
            parts.push(format!("p99 {} ms", latency.p99.as_millis()));
        }
        parts.join(", ")
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rate = |r: &Option<Rate>| {
            r.map(|r| json!({"per_second": r.per_second().round(), "seconds": r.elapsed.as_secs_f64(), "items": r.items}))
        };
        let usage = |u: &crate::writer::Usage| json!({"cpu_seconds": u.cpu.as_secs_f64(), "peak_rss_bytes": u.peak_rss_bytes});
        json!({
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "commit": self.commit,
            "machine": machine(),
            "messages": self.messages,
            "payload": self.payload,
            "envelope_bytes": self.envelope_bytes,
            "knobs": self.knobs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "publish": rate(&self.publish),
            "ceiling_jetstream": rate(&self.consume_ceiling),
            "ceiling_clickhouse": rate(&self.insert_ceiling),
            "drain": self.drain.as_ref().map(|d| json!({
                "rows_per_second": d.rate.per_second().round(),
                "seconds": d.rate.elapsed.as_secs_f64(),
                "ready_seconds": d.ready.as_secs_f64(),
                "writer": usage(&d.usage),
            })),
            "ratio_to_lower_ceiling": self.ratio(),
            "cpu_seconds": self.cpu.iter().map(|(phase, spent)| (phase.to_string(), json!({
                "nats_server": spent.nats_server,
                "clickhouse": spent.clickhouse,
                "bench": spent.bench,
            }))).collect::<serde_json::Map<_, _>>(),
            "latency": self.latency.as_ref().map(|l| json!({
                "rate": self.latency_rate,
                "seconds": self.latency_seconds,
                "published": l.published,
                "achieved_rate": l.publish_rate.round(),
                "poll_interval_ms": VISIBILITY_POLL.as_millis() as u64,
                "p50_ms": l.p50.as_secs_f64() * 1e3,
                "p99_ms": l.p99.as_secs_f64() * 1e3,
                "max_ms": l.max.as_secs_f64() * 1e3,
                "writer": usage(&l.usage),
            })),
        })
    }

    /// Writes `latest.json` and appends to `history.jsonl`; returns the former's path.
    pub fn write_json(&self, out_dir: &Path) -> anyhow::Result<PathBuf> {
        let json = self.to_json();
        let latest = out_dir.join("latest.json");
        std::fs::write(&latest, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", latest.display()))?;
        let history = out_dir.join("history.jsonl");
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&history)
            .with_context(|| format!("opening {}", history.display()))?;
        writeln!(file, "{json}").with_context(|| format!("appending to {}", history.display()))?;
        Ok(latest)
    }
}

/// CPU seconds some processes spent over one phase (`None` where /proc could not say).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSpent {
    pub nats_server: Option<f64>,
    pub clickhouse: Option<f64>,
    pub bench: Option<f64>,
}

impl std::fmt::Display for CpuSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
        write!(
            f,
            "{} / {} / {}",
            show(self.nats_server),
            show(self.clickhouse),
            show(self.bench)
        )
    }
}

/// Reads the CPU clocks of the servers and of this process, to attribute a phase's
/// CPU time: on a small machine the servers and the writer compete for the same
/// cores, which is most of the distance between the writer and the ceilings.
pub struct CpuClocks {
    nats_server: Option<u32>,
    clickhouse: Option<u32>,
}

impl CpuClocks {
    pub fn new(nats_server: Option<u32>, clickhouse: Option<u32>) -> CpuClocks {
        CpuClocks {
            nats_server,
            clickhouse,
        }
    }

    pub fn read(&self) -> CpuSpent {
        CpuSpent {
            nats_server: self
                .nats_server
                .and_then(|pid| cpu_seconds(&pid.to_string())),
            clickhouse: self
                .clickhouse
                .and_then(|pid| cpu_seconds(&pid.to_string())),
            bench: cpu_seconds("self"),
        }
    }

    /// CPU spent since `before`.
    pub fn since(&self, before: CpuSpent) -> CpuSpent {
        let now = self.read();
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuSpent {
            nats_server: diff(now.nats_server, before.nats_server),
            clickhouse: diff(now.clickhouse, before.clickhouse),
            bench: diff(now.bench, before.bench),
        }
    }
}

/// utime + stime of a process (all its threads) from /proc, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ")".
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// What the figures were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_bytes": memory_kib.map(|k| k * 1024),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_clock_of_this_process_moves_with_work() {
        let clocks = CpuClocks::new(None, None);
        let before = clocks.read();
        assert!(before.bench.is_some(), "/proc/self/stat was not parsed");
        // Work until the clock (10 ms ticks) moves; a parse that always read the same
        // field would never get there.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            if clocks.since(before).bench.unwrap() > 0.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the CPU clock never moved"
            );
        }
        assert!(clocks.since(before).nats_server.is_none());
    }

    #[test]
    fn rate_is_items_per_second() {
        assert_eq!(
            Rate::new(500, Duration::from_millis(250)).per_second(),
            2_000.0
        );
    }
}

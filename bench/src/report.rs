//! The bench's results: a table for people, JSON for tracking over time
//! (`latest.json`, and one line per run appended to `history.jsonl`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ponix_writer::config::Config;
use ponix_writer::sample;
use prost::Message as _;
use serde_json::json;

use crate::Args;
use crate::measure::{CpuSpent, Rate, thousands};
use crate::writer::{Drain, Latency, VISIBILITY_POLL};

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

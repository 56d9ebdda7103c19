//! What the bench measures with, shared by every phase: item rates, the CPU clocks
//! of the servers and of the bench, and the pacing of progress lines and deadlines.
//! It depends on nothing else in the bench, so every phase and the report can use it.

use std::time::Duration;

use localenv::process::cpu_seconds;
pub use localenv::text::thousands;
use tokio::time::Instant;

/// Longest any phase may take before the bench gives up on it.
pub const PHASE_DEADLINE: Duration = Duration::from_secs(1_800);
/// Progress lines on long phases.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// `items` done in `elapsed`.
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

/// Paces the progress lines of a long phase: one every [`PROGRESS_EVERY`].
pub struct Progress {
    last: Instant,
}

impl Progress {
    pub fn start() -> Progress {
        Progress {
            last: Instant::now(),
        }
    }

    /// True when a progress line is due (and then not again for a while).
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() < PROGRESS_EVERY {
            return false;
        }
        self.last = Instant::now();
        true
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

    #[test]
    fn progress_is_not_due_right_after_it_starts() {
        let mut progress = Progress::start();
        assert!(!progress.due());
        progress.last -= PROGRESS_EVERY;
        assert!(progress.due());
        assert!(!progress.due(), "due once per period");
    }
}

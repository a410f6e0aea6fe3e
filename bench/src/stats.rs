//! Percentiles over measured samples, and what `/proc` says about a
//! process's CPU time and memory.

use std::time::Duration;

/// The `p`-th percentile (0–100) of `samples`, by nearest rank.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// The median of `values` (the upper one of an even count; 0 when empty).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Milliseconds with three decimals.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// CPU time (user + system) of the process whose `stat` file is
/// `stat_path` (`/proc/self/stat`, `/proc/<pid>/stat`), in USER_HZ = 100
/// ticks per second on Linux.
pub(crate) fn cpu_time(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3, so
    // utime (14) and stime (15) are at offsets 11 and 12.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A memory figure (`VmRSS`, `VmHWM`, …) in MiB from a `status` file
/// (`/proc/self/status`, `/proc/<pid>/status`).
pub(crate) fn status_mib(status_path: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(status_path).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Read and write system calls this process has made (`syscr` + `syscw`
/// in `/proc/self/io`; socket reads and writes count, epoll and futex
/// calls do not).
pub(crate) fn read_write_syscalls() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .filter(|l| l.starts_with("syscr:") || l.starts_with("syscw:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Runs this benchmark binary again with `args` (a hidden child
/// subcommand, so the child's CPU time and memory are its own) and parses
/// the JSON line it prints; its stderr is the error when it fails.
pub(crate) async fn run_child<I, S>(
    args: I,
) -> Result<serde_json::Value, Box<dyn std::error::Error>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!("child failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(serde_json::from_slice(output.stdout.trim_ascii())?)
}

/// The machine a figure was measured on — core count and CPU model — for
/// every JSON line, so figures from different machines are never compared.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
    })
}

/// Whether a ratio goal holds over repeated rounds: `met` only if it holds
/// in the median *and* in every round; `not met` if it fails in the median
/// and in every round; `inconclusive` otherwise (the rounds disagree).
/// `at_most`: the goal is `ratio ≤ goal` (else `ratio ≥ goal`).
pub(crate) fn verdict(per_round: &[f64], goal: f64, at_most: bool) -> &'static str {
    let holds = |r: f64| if at_most { r <= goal } else { r >= goal };
    let median = median(per_round.to_vec());
    if per_round.is_empty() {
        "inconclusive"
    } else if holds(median) && per_round.iter().all(|r| holds(*r)) {
        "met"
    } else if !holds(median) && per_round.iter().all(|r| !holds(*r)) {
        "not met"
    } else {
        "inconclusive"
    }
}

/// One goal's figures: prints `name`, every round's value and the
/// verdict (stderr), and returns them as JSON — the rounds, median and
/// spread ([`rounds`]), the goal and the verdict ([`verdict`]).
pub(crate) fn goal(name: &str, per_round: &[f64], goal: f64, at_most: bool) -> serde_json::Value {
    let verdict = verdict(per_round, goal, at_most);
    let sign = if at_most { "≤" } else { "≥" };
    eprintln!("  {name}: by round {per_round:.3?} (goal {sign} {goal}: {verdict})");
    let mut figure = rounds(per_round);
    figure["goal"] = serde_json::json!(format!("{sign} {goal}"));
    figure["verdict"] = serde_json::json!(verdict);
    figure
}

/// Every round's figure, their median and spread ((max − min) / median),
/// as printed and as JSON.
pub(crate) fn rounds(values: &[f64]) -> serde_json::Value {
    let median = median(values.to_vec());
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let spread = if median > 0.0 && !values.is_empty() {
        (hi - lo) / median
    } else {
        0.0
    };
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    serde_json::json!({
        "rounds": values.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        "median": round3(median),
        "spread": round3(spread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_is_met_only_when_every_round_agrees() {
        assert_eq!(verdict(&[0.5, 0.55, 0.58], 0.6, true), "met");
        assert_eq!(verdict(&[0.5, 0.55, 0.65], 0.6, true), "inconclusive");
        assert_eq!(verdict(&[0.7, 0.8, 0.65], 0.6, true), "not met");
        assert_eq!(verdict(&[0.96, 0.97, 0.99], 0.95, false), "met");
        assert_eq!(verdict(&[0.90, 0.97, 0.99], 0.95, false), "inconclusive");
        assert_eq!(verdict(&[], 0.95, false), "inconclusive");
        let r = rounds(&[1.0, 2.0, 3.0]);
        assert_eq!(r["median"], 2.0);
        assert_eq!(r["spread"], 1.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}

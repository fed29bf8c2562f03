//! Issue 8's targets, checked against one run's figures, so that every run says which it reached.
//!
//! The p99 at ten million records against ten thousand needs runs with different pre-loads: a run given
//! earlier runs' JSON results (`--baseline`) compares its p99 with the median of theirs ([`scale`]).

use serde::{Deserialize, Serialize};

use crate::Run;

/// The level the throughput and latency targets are set at.
const LEVEL: u32 = 64;

/// One target: what is wanted, what the run measured, and whether that is enough.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub what: String,
    pub wanted: String,
    pub measured: String,
    pub reached: bool,
}

fn at<'a>(runs: &'a [Run], target: &str, connections: u32) -> Option<&'a Run> {
    runs.iter().find(|r| r.target == target && r.connections == connections)
}

fn at_least(what: String, wanted: f64, measured: f64) -> Target {
    Target { what, wanted: format!(">= {wanted:.2}"), measured: format!("{measured:.2}"), reached: measured >= wanted }
}

fn at_most(what: String, wanted: f64, measured: f64, unit: &str) -> Target {
    Target {
        what,
        wanted: format!("<= {wanted}{unit}"),
        measured: format!("{measured:.2}{unit}"),
        reached: measured <= wanted,
    }
}

/// The targets `runs` can answer. `preload` sets the memory bound: 64 MiB up to ten thousand records, 128 MiB
/// up to ten million.
pub fn check(runs: &[Run], preload: u64) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(live) = at(runs, "service /health/live", LEVEL) {
        if let Some(ratio) = live.vs_hello {
            out.push(at_least(format!("/health/live against the bare route, c={LEVEL}"), 0.75, ratio));
        }
    }
    for (store, ratio, p99) in [("sqlite", 0.30, 10.0), ("postgres", 0.15, 25.0)] {
        let Some(mix) = at(runs, &format!("mix, {store}"), LEVEL) else { continue };
        if let Some(vs_live) = mix.vs_live {
            out.push(at_least(format!("{store} mix against /health/live, c={LEVEL}"), ratio, vs_live));
        }
        out.push(at_most(format!("{store} mix p99, c={LEVEL}"), p99, mix.p99_ms, " ms"));
        out.push(Target {
            what: format!("{store} mix errors, c={LEVEL}"),
            wanted: "0".into(),
            measured: mix.errors.to_string(),
            reached: mix.errors == 0,
        });
    }
    let bound = if preload <= 10_000 { 64.0 } else { 128.0 };
    for store in ["sqlite", "postgres"] {
        let mix = format!("mix, {store}");
        let peak = runs.iter().filter(|r| r.target == mix).filter_map(|r| r.peak_rss_mib).reduce(f64::max);
        if let Some(peak) = peak {
            out.push(at_most(format!("{store} peak memory, {preload} records"), bound, peak, " MiB"));
        }
    }
    out
}

/// What [`scale`] reads of an earlier run's JSON results.
#[derive(Debug, Clone, Deserialize)]
pub struct Earlier {
    pub preload: u64,
    pub runs: Vec<EarlierRun>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EarlierRun {
    pub target: String,
    pub connections: u32,
    pub p99_ms: f64,
}

/// The largest p99 at this run's `preload` against the median p99 of `earlier` runs, all with the same
/// smaller pre-load, per store at 64 connections: at most 1.5×. A store that either side lacks gives no
/// target; earlier runs with different or not smaller pre-loads are refused, since the median would mean
/// nothing.
pub fn scale(runs: &[Run], preload: u64, earlier: &[Earlier]) -> Result<Vec<Target>, String> {
    let Some(first) = earlier.first() else { return Ok(Vec::new()) };
    if earlier.iter().any(|e| e.preload != first.preload) {
        return Err("the baseline runs pre-loaded different numbers of records".into());
    }
    if first.preload >= preload {
        return Err(format!(
            "the baseline runs pre-loaded {} records, not fewer than this run's {preload}",
            first.preload
        ));
    }
    let mut out = Vec::new();
    for store in ["sqlite", "postgres"] {
        let mix = format!("mix, {store}");
        let now = runs.iter().filter(|r| r.target == mix && r.connections == LEVEL).map(|r| r.p99_ms).reduce(f64::max);
        let mut before: Vec<f64> = earlier
            .iter()
            .flat_map(|e| &e.runs)
            .filter(|r| r.target == mix && r.connections == LEVEL)
            .map(|r| r.p99_ms)
            .collect();
        let (Some(now), false) = (now, before.is_empty()) else { continue };
        before.sort_by(f64::total_cmp);
        let mid = before.len() / 2;
        let median = if before.len() % 2 == 1 { before[mid] } else { (before[mid - 1] + before[mid]) / 2.0 };
        let what = format!(
            "{store} p99 at {preload} records against {} (median of {}), c={LEVEL}",
            first.preload,
            before.len()
        );
        out.push(Target {
            what,
            wanted: "<= 1.5x".into(),
            // The baselines' spread beside the median: a noisy spell in one of them moves the median, and
            // the ratio with it, and that should show where the ratio is read.
            measured: format!(
                "{:.2}x ({now:.2} / {median:.2} ms; baselines {:.2}-{:.2} ms)",
                now / median,
                before[0],
                before[before.len() - 1]
            ),
            reached: now <= 1.5 * median,
        });
    }
    Ok(out)
}

/// The targets as lines of text, for the terminal.
pub fn lines(targets: &[Target]) -> Vec<String> {
    targets
        .iter()
        .map(|t| {
            let verdict = if t.reached { "reached" } else { "NOT reached" };
            format!("  {:<46} wanted {:<10} measured {:<11} {verdict}", t.what, t.wanted, t.measured)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{check, lines, scale, Earlier, EarlierRun, Target};
    use crate::Run;

    fn run(target: &str, connections: u32, p99_ms: f64, rss: f64, vs_hello: Option<f64>, vs_live: Option<f64>) -> Run {
        Run {
            target: target.into(),
            connections,
            requests_per_s: 1000.0,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms,
            errors: 0,
            cpu_cores: None,
            peak_rss_mib: Some(rss),
            log_bytes_per_request: None,
            vs_hello,
            vs_live,
        }
    }

    fn find<'a>(targets: &'a [Target], what: &str) -> &'a Target {
        targets.iter().find(|t| t.what == what).unwrap_or_else(|| panic!("no target {what}: {targets:?}"))
    }

    #[test]
    fn each_target_is_reached_exactly_at_its_bound() {
        let runs = vec![
            run("service /health/live", 64, 1.0, 20.0, Some(0.75), None),
            run("mix, sqlite", 16, 50.0, 70.0, None, Some(0.01)),
            run("mix, sqlite", 64, 10.0, 64.0, None, Some(0.30)),
            run("mix, postgres", 64, 25.01, 30.0, None, Some(0.149)),
        ];
        let t = check(&runs, 10_000);
        assert!(find(&t, "/health/live against the bare route, c=64").reached);
        assert!(find(&t, "sqlite mix against /health/live, c=64").reached);
        assert!(find(&t, "sqlite mix p99, c=64").reached, "10 ms is within 10 ms");
        assert!(!find(&t, "postgres mix against /health/live, c=64").reached);
        assert!(!find(&t, "postgres mix p99, c=64").reached);
        // The run at 16 connections counts for memory (its 70 MiB is over 64), not for speed.
        let memory = find(&t, "sqlite peak memory, 10000 records");
        assert_eq!((memory.measured.as_str(), memory.reached), ("70.00 MiB", false));
        assert!(find(&t, "postgres peak memory, 10000 records").reached);
        assert!(find(&t, "sqlite mix errors, c=64").reached);
    }

    #[test]
    fn each_target_prints_as_one_line_with_its_verdict() {
        let t = check(&[run("mix, sqlite", 64, 9.0, 80.0, None, Some(0.2))], 10_000);
        let printed = lines(&t);
        assert_eq!(printed.len(), t.len());
        let p99 = printed.iter().find(|l| l.contains("sqlite mix p99, c=64")).expect("the p99 line");
        assert!(p99.contains("<= 10 ms") && p99.contains("9.00 ms") && p99.ends_with(" reached"), "{p99}");
        let ratio = printed.iter().find(|l| l.contains("against /health/live")).expect("the ratio line");
        assert!(ratio.contains("0.20") && ratio.ends_with("NOT reached"), "{ratio}");
    }

    fn earlier(preload: u64, p99s: &[(&str, f64)]) -> Earlier {
        let runs = p99s
            .iter()
            .map(|&(target, p99_ms)| EarlierRun { target: target.into(), connections: 64, p99_ms })
            .collect();
        Earlier { preload, runs }
    }

    #[test]
    fn the_scale_target_is_the_worst_p99_against_the_median_of_the_baselines() {
        // The JSON `bench` writes, as read back.
        let json = r#"{"preload": 10000, "seconds": 10, "runs": [
            {"target": "mix, sqlite", "connections": 16, "p99_ms": 1.0, "requests_per_s": 5.0},
            {"target": "mix, sqlite", "connections": 64, "p99_ms": 8.0, "requests_per_s": 5.0}]}"#;
        let read: Earlier = serde_json::from_str(json).unwrap();
        let baselines = [read, earlier(10_000, &[("mix, sqlite", 6.0)]), earlier(10_000, &[("mix, sqlite", 100.0)])];
        // Median of 8, 6 and 100 is 8; the runs at 16 connections, and of other targets, are not counted, on
        // either side. 12 ms is 1.5× exactly.
        let runs = vec![
            run("mix, sqlite", 64, 12.0, 50.0, None, None),
            run("mix, sqlite", 64, 11.0, 50.0, None, None),
            run("mix, sqlite", 16, 40.0, 50.0, None, None),
            run("service /health/live", 64, 30.0, 50.0, None, None),
        ];
        let t = scale(&runs, 10_000_000, &baselines).unwrap();
        assert_eq!(t.len(), 1, "no PostgreSQL runs on either side: {t:?}");
        let s = find(&t, "sqlite p99 at 10000000 records against 10000 (median of 3), c=64");
        assert!(s.reached, "{s:?}");
        assert_eq!(s.measured, "1.50x (12.00 / 8.00 ms; baselines 6.00-100.00 ms)");
        // The worst run at this pre-load counts: 12.01 ms is over.
        let worse =
            vec![run("mix, sqlite", 64, 9.0, 50.0, None, None), run("mix, sqlite", 64, 12.01, 50.0, None, None)];
        assert!(!scale(&worse, 10_000_000, &baselines).unwrap()[0].reached);
        // An even number of baselines: the mean of the middle two, (6 + 8) / 2 = 7.
        let two = scale(&runs, 10_000_000, &baselines[..2]).unwrap();
        assert_eq!(two[0].measured, "1.71x (12.00 / 7.00 ms; baselines 6.00-8.00 ms)");
        assert!(!two[0].reached);
        assert!(scale(&runs, 10_000_000, &[]).unwrap().is_empty());
    }

    #[test]
    fn baselines_must_share_a_smaller_preload() {
        let runs = vec![run("mix, postgres", 64, 10.0, 50.0, None, None)];
        let mixed = [earlier(10_000, &[("mix, postgres", 8.0)]), earlier(20_000, &[("mix, postgres", 8.0)])];
        assert!(scale(&runs, 10_000_000, &mixed).unwrap_err().contains("different"));
        let same = [earlier(10_000_000, &[("mix, postgres", 8.0)])];
        assert!(scale(&runs, 10_000_000, &same).unwrap_err().contains("not fewer"));
        let t = scale(&runs, 10_000_000, &[earlier(10_000, &[("mix, postgres", 8.0)])]).unwrap();
        assert_eq!((t[0].measured.as_str(), t[0].reached), ("1.25x (10.00 / 8.00 ms; baselines 8.00-8.00 ms)", true));
    }

    #[test]
    fn more_records_allow_more_memory_and_missing_runs_give_no_target() {
        let runs = vec![run("mix, sqlite", 64, 12.0, 100.0, None, None)];
        let t = check(&runs, 10_000_000);
        assert!(find(&t, "sqlite peak memory, 10000000 records").reached, "128 MiB at ten million");
        assert!(!find(&t, "sqlite mix p99, c=64").reached);
        assert!(t.iter().all(|t| !t.what.contains("postgres") && !t.what.contains("/health/live")), "{t:?}");
        let mut errors = runs.clone();
        errors[0].errors = 3;
        assert!(!find(&check(&errors, 10_000), "sqlite mix errors, c=64").reached);
    }
}

//! `bench`: the service under a realistic load, measured from outside, beside the machine's ceilings.
//!
//! For each store (`--stores sqlite,postgres`): a fresh store, migrated by the real binary, pre-loaded with
//! `--preload` open records in bulk (SQL, not HTTP), then the release `integration-service` started on it
//! with its production defaults (JSON logs at info, drained from a pipe). wrk (Debian's package) drives the
//! mix of `mix.lua` at each `--connections` level for `--seconds`. In the same run wrk measures a bare axum
//! route (`hello`) and the service's own `/health/live` at the same levels. It prints, per store and level,
//! requests/s, p50/p95/p99, errors, the service's CPU and peak memory, and the ratios to both ceilings, and
//! writes them as JSON plus an SVG chart.
//!
//! For PostgreSQL it also measures what the database itself does on this machine with one transaction per
//! request and nothing in front of it: `pgbench -N` (its simple-update transaction, five statements) with as
//! many clients as the service has connections, if `pgbench` is installed. The mix's requests are one
//! transaction each, so that figure is their ceiling on this machine whatever the service does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;

mod chart;
mod preload;
mod targets;

#[derive(Parser, Debug)]
#[command(name = "bench", about = "A realistic mix through HTTP with wrk, against the machine's ceilings")]
struct Args {
    /// Stores to measure, comma-separated: sqlite, postgres
    #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
    stores: Vec<String>,
    /// Connection levels, comma-separated
    #[arg(long, default_value = "16,64,256", value_delimiter = ',')]
    connections: Vec<u32>,
    /// Records pre-loaded into each fresh store
    #[arg(long, default_value_t = 10_000)]
    preload: u64,
    /// Seconds per measurement
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk threads
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Percentage of the mix's requests sent with an Idempotency-Key of their own (0-100)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    keyed: u8,
    /// Where the JSON results go
    #[arg(long, default_value = "docs/bench/results.json")]
    json: PathBuf,
    /// Where the SVG chart goes
    #[arg(long, default_value = "docs/bench/bench.svg")]
    svg: PathBuf,
    /// JSON results of earlier runs with fewer records pre-loaded, comma-separated: this run's p99 at 64
    /// connections is compared with the median of theirs (the target of 1.5x at ten million records)
    #[arg(long, value_delimiter = ',')]
    baseline: Vec<PathBuf>,
}

/// One wrk run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub target: String,
    pub connections: u32,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// The measured process's CPU, in cores (1.0 = one core busy the whole time).
    pub cpu_cores: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub log_bytes_per_request: Option<f64>,
    pub vs_hello: Option<f64>,
    pub vs_live: Option<f64>,
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// A process under measurement, with its stdout drained (and counted).
struct Served {
    child: Child,
    base: String,
    log_bytes: Arc<AtomicU64>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// A started process whose output is drained (and counted) by a thread of its own.
fn counted(child: Child, addr: String, mut out: impl Read + Send + 'static) -> Served {
    let log_bytes = Arc::new(AtomicU64::new(0));
    let counter = log_bytes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    Served { child, base: format!("http://{addr}"), log_bytes }
}

fn serve(command: Command, listening: impl Fn(&str) -> Option<String>) -> Served {
    let (child, addr, out) = tools::spawn_listening(command, listening).unwrap_or_else(|e| panic!("bench: {e}"));
    counted(child, addr, out)
}

fn wrk(args: &Args, url: &str, connections: u32, script: &Path, env: &[(&str, String)]) -> Value {
    let mut command = Command::new("wrk");
    command
        .args(["-t", &args.threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{}s", args.seconds)])
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = command.output().unwrap_or_else(|e| panic!("bench: wrk is needed (apt-get install wrk): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("BENCH ")).unwrap_or_else(|| panic!("bench: wrk said {text}"));
    serde_json::from_str(line).expect("wrk's summary")
}

fn measure(
    args: &Args,
    target: &str,
    served: &Served,
    path: &str,
    connections: u32,
    script: &Path,
    env: &[(&str, String)],
) -> Run {
    let pid = served.child.id();
    let (cpu0, logs0, t0) = (cpu_seconds(pid), served.log_bytes.load(Ordering::Relaxed), Instant::now());
    let summary = wrk(args, &format!("{}{path}", served.base), connections, script, env);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).zip(cpu0).map(|(b, a)| (b - a) / wall);
    let requests = summary["requests"].as_f64().unwrap_or(0.0);
    let seconds = summary["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    let errors = summary["errors"].as_object().map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
    let ms = |k: &str| summary[k].as_f64().unwrap_or(0.0) / 1000.0;
    let logs = served.log_bytes.load(Ordering::Relaxed) - logs0;
    Run {
        target: target.to_owned(),
        connections,
        requests_per_s: requests / seconds,
        p50_ms: ms("p50"),
        p95_ms: ms("p95"),
        p99_ms: ms("p99"),
        errors,
        cpu_cores: cpu,
        peak_rss_mib: proc_field(pid, "status", "VmHWM:").map(|kib| kib as f64 / 1024.0),
        log_bytes_per_request: (requests > 0.0).then(|| logs as f64 / requests),
        vs_hello: None,
        vs_live: None,
    }
}

/// The service's PostgreSQL connections per replica (its default), and so pgbench's clients.
const POSTGRES_POOL: u32 = 16;

/// `pgbench -N -M prepared` on a scratch database of scale 10, `POSTGRES_POOL` clients for `--seconds`:
/// transactions per second, or `None` when pgbench is not installed or fails (the reason is printed).
fn pgbench(args: &Args, rt: &tokio::runtime::Runtime) -> Option<f64> {
    let db = rt.block_on(ScratchDb::create("crm_pgbench"));
    let run = |extra: &[&str]| {
        let out = Command::new("pgbench").args(extra).arg(&db.url).output();
        match out {
            Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => {
                println!("pgbench failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
                None
            }
            Err(e) => {
                println!("pgbench not run ({e}); it comes with PostgreSQL's client or contrib package");
                None
            }
        }
    };
    run(&["-i", "-q", "-s", "10"])?;
    let (clients, seconds) = (POSTGRES_POOL.to_string(), args.seconds.to_string());
    let out = run(&["-N", "-M", "prepared", "-c", &clients, "-j", "2", "-T", &seconds])?;
    tps(&out)
}

/// The `tps = …` figure of pgbench's report.
fn tps(report: &str) -> Option<f64> {
    report.lines().find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
}

fn start_service(store: &str) -> Served {
    let bin = tools::service_binary(None).unwrap_or_else(|e| panic!("bench: {e}"));
    let (child, addr, out) = tools::start_service(&bin, store, &[]).unwrap_or_else(|e| panic!("bench: {e}"));
    counted(child, addr, out)
}

/// What the service did with the mix, from its own `crm_lifecycle_outcomes_total`: proof that the mix is
/// the one described (creates that were CREATED, EXISTING or REPLACED, conversions, closes).
fn outcomes(base: &str) -> Vec<(String, f64)> {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else { return Vec::new() };
    let _ = write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("crm_lifecycle_outcomes_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.trim_start_matches("crm_lifecycle_outcomes_total").to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn print(run: &Run) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2}{unit}"));
    println!(
        "{:<22} c={:<4} {:>9.0} req/s  p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  errors {:<5} cpu {:>6}  rss {:>10}  log/req {:>7}  vs hello {:>6}  vs live {:>6}",
        run.target,
        run.connections,
        run.requests_per_s,
        run.p50_ms,
        run.p95_ms,
        run.p99_ms,
        run.errors,
        opt(run.cpu_cores, ""),
        opt(run.peak_rss_mib, " MiB"),
        opt(run.log_bytes_per_request, " B"),
        opt(run.vs_hello, ""),
        opt(run.vs_live, ""),
    );
}

fn main() {
    let args = Args::parse();
    // Read (and checked against this run's pre-load) first, so that a wrong path or an unfit baseline fails
    // at once, before the runs and before anything is written.
    let earlier: Vec<targets::Earlier> = args
        .baseline
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("bench: cannot read {}: {e}", p.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("bench: {} is not bench's JSON: {e}", p.display()))
        })
        .collect();
    if let Err(e) = targets::scale(&[], args.preload, &earlier) {
        panic!("bench: {e}");
    }
    let dir = std::env::temp_dir().join(format!("crm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let report = dir.join("report.lua");
    std::fs::write(&report, include_str!("../report.lua")).expect("write report.lua");
    let mix = dir.join("mix.lua");
    std::fs::write(&mix, format!("{}\n{}", include_str!("../mix.lua"), include_str!("../report.lua")))
        .expect("write mix.lua");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut runs: Vec<Run> = Vec::new();
    let mut mixes: Vec<Value> = Vec::new();
    let mut pgbench_tps: Option<f64> = None;

    // The ceilings: a bare axum route, and the service's own /health/live (on an empty embedded store).
    let hello =
        serve(Command::new(tools::sibling("hello")), |l| l.trim().strip_prefix("listening ").map(str::to_owned));
    let live_store = format!("sqlite://{}", dir.join("live.db").display());
    let live = start_service(&live_store);
    let mut hello_at = std::collections::HashMap::new();
    let mut live_at = std::collections::HashMap::new();
    for &c in &args.connections {
        let h = measure(&args, "hello (bare axum)", &hello, "/", c, &report, &[]);
        let mut l = measure(&args, "service /health/live", &live, "/health/live", c, &report, &[]);
        l.vs_hello = Some(l.requests_per_s / h.requests_per_s);
        hello_at.insert(c, h.requests_per_s);
        live_at.insert(c, l.requests_per_s);
        print(&h);
        print(&l);
        runs.push(h);
        runs.push(l);
    }
    drop(hello);
    drop(live);

    for store in &args.stores {
        let (url, _db) = match store.as_str() {
            "sqlite" => (format!("sqlite://{}", dir.join("crm.db").display()), None),
            "postgres" => {
                let db = rt.block_on(ScratchDb::create("crm_bench"));
                (db.url.clone(), Some(db))
            }
            other => panic!("bench: unknown store {other} (sqlite, postgres)"),
        };
        let bin = tools::service_binary(None).unwrap_or_else(|e| panic!("bench: {e}"));
        tools::migrate(&bin, &url).unwrap_or_else(|e| panic!("bench: {e}"));
        let t = Instant::now();
        rt.block_on(preload::run(&url, args.preload)).expect("preload");
        println!("{store}: {} records pre-loaded in {:.1}s", args.preload, t.elapsed().as_secs_f64());
        // One service serves every level, as a running service would; the mix's ids wrap, so later levels
        // see repeats of closes (answered 200, as the first time) rather than errors.
        let ceiling = (store == "postgres").then(|| pgbench(&args, &rt)).flatten();
        if let Some(tps) = ceiling {
            println!(
                "{:<22} c={POSTGRES_POOL:<4} {tps:>9.0} transactions/s (the database alone, one per request)",
                "pgbench -N"
            );
            pgbench_tps = Some(tps);
        }
        let served = start_service(&url);
        for &c in &args.connections {
            let env = [
                ("PRELOAD", args.preload.to_string()),
                ("THREADS", args.threads.to_string()),
                ("KEYED", args.keyed.to_string()),
            ];
            let mut run = measure(&args, &format!("mix, {store}"), &served, "", c, &mix, &env);
            run.vs_hello = hello_at.get(&c).map(|h| run.requests_per_s / h);
            run.vs_live = live_at.get(&c).map(|l| run.requests_per_s / l);
            print(&run);
            if let Some(tps) = ceiling {
                println!("{:<22} {:.2} of pgbench -N", "", run.requests_per_s / tps);
            }
            runs.push(run);
        }
        let done = outcomes(&served.base);
        for (labels, n) in &done {
            println!("  {store}: {n:>8} {labels}");
        }
        mixes.push(json!({ "store": store, "outcomes": done.iter().map(|(l, n)| json!({"labels": l, "count": n})).collect::<Vec<_>>() }));
    }
    let mut reached = targets::check(&runs, args.preload);
    reached.extend(targets::scale(&runs, args.preload, &earlier).unwrap_or_else(|e| panic!("bench: {e}")));
    println!("issue 8's targets, from this run:");
    for line in targets::lines(&reached) {
        println!("{line}");
    }
    let results = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "preload": args.preload,
        "seconds": args.seconds,
        "keyed_percent": args.keyed,
        "runs": runs,
        "outcomes": mixes,
        "pgbench_simple_update_tps": pgbench_tps,
        "targets": reached,
    });
    if let Some(parent) = args.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&results).expect("json")).expect("write the JSON");
    std::fs::write(&args.svg, chart::svg(&runs, &args.connections)).expect("write the SVG");
    println!("wrote {} and {}", args.json.display(), args.svg.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pgbench_tps() {
        let report = "latency average = 3.1 ms\ntps = 4514.521551 (without initial connection time)\n";
        assert_eq!(super::tps(report), Some(4514.521551));
        assert_eq!(super::tps("tps: none\n"), None);
    }
}

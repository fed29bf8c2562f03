//! `bench`: throughput, latency and memory of the real service binary, measured from outside.
//!
//! Starts `integration-service serve` on a fresh store (a temporary SQLite file by default, or a fresh
//! database on the PostgreSQL server of `CRM_TEST_POSTGRES_URL` with `--postgres`), sends `--requests`
//! creates over `--keys` distinct customers with `--concurrency` in flight, and prints requests per second,
//! latency percentiles and the service's peak resident memory. Every create is durable before it is
//! answered, so this measures durable creates.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;

#[derive(Parser, Debug)]
#[command(name = "bench", about = "Measure durable creates per second against the real service")]
struct Args {
    /// The integration-service binary [default: next to this one]
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Use a fresh PostgreSQL database instead of a temporary SQLite file
    #[arg(long)]
    postgres: bool,
    #[arg(long, default_value_t = 20000)]
    requests: usize,
    /// Distinct customers; with as many keys as requests every create is CREATED
    #[arg(long, default_value_t = 20000)]
    keys: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin = args.service_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap_or_default()
            .with_file_name(format!("integration-service{}", std::env::consts::EXE_SUFFIX))
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile_dir();
        let (store, _db) = if args.postgres {
            let db = ScratchDb::create("crm_bench").await;
            (db.url.clone(), Some(db))
        } else {
            (format!("sqlite://{}/crm.db", dir.display()), None)
        };
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &store, "--log-format", "json"])
            .env("RUST_LOG", "warn,integration_service::startup=info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the service starts");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut base = String::new();
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    base = format!("http://{}", v["address"].as_str().unwrap_or_default());
                    break;
                }
            }
            line.clear();
        }
        std::thread::spawn(move || for _ in out.lines() {});
        if base.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("bench: the service did not start");
            return ExitCode::from(2);
        }
        let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().expect("client");
        let url = format!("{base}/integration-service/int/api/crm/v1/combo-create-lead-opportunity");
        let started = Instant::now();
        let results: Vec<(u16, Duration)> = stream::iter(0..args.requests)
            .map(|n| {
                let (client, url) = (client.clone(), url.clone());
                let key = n % args.keys.max(1);
                async move {
                    let body = json!({
                        "customerType": "NTB", "customer": {"idNumber": format!("B{key:08}"), "fullName": "Bench Customer",
                        "phone": "+84901234567", "email": "bench@example.com"},
                        "product": "CARD", "ownerId": "RM001", "channel": "BENCH", "journeyId": format!("J{n}")
                    });
                    let t = Instant::now();
                    let status = client.post(&url).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                    (status, t.elapsed())
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let rss = peak_rss_kib(child.id());
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        let ok = results.iter().filter(|(s, _)| *s == 200 || *s == 201).count();
        let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
        latencies.sort();
        println!("store: {}", if args.postgres { "postgres" } else { "sqlite" });
        println!("requests: {} ({} ok), concurrency {}, keys {}", results.len(), ok, args.concurrency, args.keys);
        println!("throughput: {:.0} durable creates/s over {:.2}s", ok as f64 / elapsed.as_secs_f64(), elapsed.as_secs_f64());
        println!(
            "latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
        if let Some(kib) = rss {
            println!("service peak RSS: {:.1} MiB", kib as f64 / 1024.0);
        }
        let _ = std::fs::remove_dir_all(&dir);
        if ok == results.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crm-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

//! `bench --baseline`: earlier results that cannot be compared with this run stop it before it measures.

use std::process::{Command, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn bench(baseline: &str, preload: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(BENCH)
        .args(["--stores", "sqlite", "--connections", "16", "--seconds", "1", "--preload", preload])
        .args(["--baseline", baseline])
        .arg("--json")
        .arg(dir.join("out.json"))
        .arg("--svg")
        .arg(dir.join("out.svg"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let work = std::env::temp_dir().join(format!("crm-bench-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!dir.join("out.json").exists(), "nothing was measured or written: {text}");
    assert!(!work.exists(), "no working folder was left behind: {text}");
    (out.status.success(), text)
}

#[test]
fn a_baseline_with_as_many_records_or_unreadable_stops_the_run_at_once() {
    let file = std::env::temp_dir().join(format!("bench-baseline-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"preload": 10000, "runs": [{"target": "mix, sqlite", "connections": 64, "p99_ms": 8.0}]}"#,
    )
    .unwrap();
    let (ok, text) = bench(file.to_str().unwrap(), "10000");
    assert!(!ok && text.contains("pre-loaded 10000 records, not fewer than this run's 10000"), "{text}");
    let (ok, text) = bench("/nonexistent/results.json", "10000000");
    assert!(!ok && text.contains("cannot read /nonexistent/results.json"), "{text}");
    std::fs::write(&file, "{}").unwrap();
    let (ok, text) = bench(file.to_str().unwrap(), "10000000");
    assert!(!ok && text.contains("is not bench's JSON"), "{text}");
    std::fs::remove_file(&file).unwrap();
}

//! A smaller run of `replica-check`: two service processes on one PostgreSQL database, hundreds of
//! competing requests, then the database checked. And the check itself fails on a broken database.

use std::process::Command;

const CHECK: &str = env!("CARGO_BIN_EXE_replica-check");

fn run(extra: &[&str]) -> (i32, String) {
    // The service binary the workspace built (`cargo test --workspace` builds it; alone: cargo build first).
    let service = tools::service_binary(None).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(CHECK)
        .args([
            "--service-bin",
            service.to_str().unwrap(),
            "--requests",
            "600",
            "--keys",
            "8",
            "--owners",
            "3",
            "--concurrency",
            "32",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn two_replicas_keep_the_invariant() {
    let (code, out) = run(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("violations: 0"), "{out}");
    assert!(out.contains("replicas: 2"), "{out}");
    assert!(out.contains("replicas stopped with exit 0: true"), "{out}");
    let count = |name: &str| -> usize {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")).map(str::to_owned))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // The run exercised every operation, leads as well as opportunities, and idempotent replays.
    assert!(count("acknowledged creates") > 100, "{out}");
    assert!(count("records closed by REPLACED answers") > 0, "{out}");
    assert!(count("acknowledged close-wons") > 0, "{out}");
    assert!(count("acknowledged close-losts") > 0, "{out}");
    assert!(count("leads in the database") > 0, "{out}");
    assert!(count("idempotent replays checked") > 0, "{out}");
    assert!(count("rows of the reports' counts checked against the history") > 0, "{out}");
}

#[test]
fn the_check_fails_when_the_invariant_is_broken() {
    let (code, out) = run(&["--sabotage"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("VIOLATION") && out.contains("open LEAD records for key RC0000/CARD"), "{out}");
    assert!(out.contains("the reports' counts") && out.contains("SABOTAGE"), "{out}");
}

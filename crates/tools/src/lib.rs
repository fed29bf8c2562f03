//! What the tools share: finding the `integration-service` binary, starting it as a process of its own and
//! waiting until it listens, and the API's paths.
//!
//! The binaries: `bench` (the benchmark, `src/main.rs`), `hello` (the bare axum route it measures as a
//! ceiling) and `replica-check` (several replicas on one PostgreSQL database, then the invariant checked).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

pub const CREATE: &str = "/integration-service/int/api/crm/v1/combo-create-lead-opportunity";
pub const CLOSE_WON: &str = "/integration-service/int/api/crm/v1/combo-update-lead-opportunity";
pub const LOST_OPP: &str = "/integration-service/api/crm/v1/update-opportunity-status";
pub const LOST_LEAD: &str = "/integration-service/api/crm/v1/update-lead-status";

/// A binary built beside the running one (`target/release/bench` finds `target/release/NAME`); from a test
/// executable (in `deps/`), the one a folder up.
pub fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = me.with_file_name(&file);
    match me.parent().and_then(|dir| dir.parent()) {
        Some(up) if !beside.exists() && me.parent().is_some_and(|d| d.ends_with("deps")) => up.join(file),
        _ => beside,
    }
}

/// The `integration-service` binary: `explicit` if given, else beside this one. An error says how to build it.
pub fn service_binary(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let bin = explicit.unwrap_or_else(|| sibling("integration-service"));
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} is missing: build it first (cargo build -p integration-service)", bin.display()))
    }
}

/// Starts `command` with its stdout piped and reads lines until `listening` finds the address in one;
/// returns the process, the address and the rest of its output (the caller drains it, so the process
/// never blocks on a full pipe). The process is killed if it exits or closes its output first.
pub fn spawn_listening(
    mut command: Command,
    listening: impl Fn(&str) -> Option<String>,
) -> Result<(Child, String, BufReader<ChildStdout>), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{:?} exited before listening", command.get_program()));
        }
        if let Some(addr) = listening(&line) {
            return Ok((child, addr, out));
        }
    }
}

/// `integration-service serve --listen 127.0.0.1:0 --store STORE --log-format json` with `env`, ready once it
/// logs `listening` (its address is in that line).
pub fn start_service(
    bin: &PathBuf,
    store: &str,
    env: &[(&str, &str)],
) -> Result<(Child, String, BufReader<ChildStdout>), String> {
    let mut command = Command::new(bin);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store, "--log-format", "json"])
        .envs(env.iter().copied());
    spawn_listening(command, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["message"] == "listening").then(|| v["address"].as_str().map(str::to_owned)).flatten()
    })
}

/// `integration-service migrate --store STORE`, as a deployment runs it before the replicas start.
pub fn migrate(bin: &PathBuf, store: &str) -> Result<(), String> {
    let out = Command::new(bin).args(["migrate", "--store", store]).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("migrate failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

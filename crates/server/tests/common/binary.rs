//! The real `integration-service` binary as a process of its own, for tests that need one (signals,
//! connection limits, SIGKILL): started on a free port, ready once it logs `listening`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_integration-service");

/// Starts `integration-service serve --listen 127.0.0.1:0 --log-format json` plus `args`, with `env`, waits
/// for its `listening` line and returns the process and its address (`127.0.0.1:PORT`). The rest of its
/// output is drained by a thread so it never blocks on a full pipe. The caller kills and waits for it.
#[allow(clippy::zombie_processes)] // returned to the caller, which waits for it
pub fn serve(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let status = child.wait();
            panic!("the service exited before listening: {status:?}");
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "listening" {
                let addr = v["address"].as_str().unwrap().to_owned();
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return (child, addr);
            }
        }
    }
}

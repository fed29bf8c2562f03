//! A `nats-server -js` of a test's own, on a free port with its own store folder, that the test can stop
//! and start again (same port, same stream); and a reader of every message its event stream holds.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where `nats-server` is: `NATS_SERVER`, else the Debian package's path, else the PATH.
fn binary() -> String {
    std::env::var("NATS_SERVER").ok().unwrap_or_else(|| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    })
}

pub struct Nats {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Starts a server with JetStream and waits until it accepts connections.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut nats = Self { port, dir: tempfile::tempdir().unwrap(), child: None };
        nats.resume();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (after [`Nats::stop`]), on the same port and store folder.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (the CI machine has it; or set NATS_SERVER)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message of `stream`, as JSON bodies in stream order (empty if the stream does not exist yet).
pub async fn messages(url: &str, stream: &str) -> Vec<Value> {
    let client = async_nats::connect(url).await.expect("connect to the test's NATS");
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let mut v: Value = serde_json::from_slice(&m.payload).expect("an event is JSON");
            v["_subject"] = Value::String(m.subject.to_string());
            out.push(v);
        }
    }
    out
}

#[allow(dead_code)] // the API tests use it; the kill test waits on the outbox instead
/// Waits until `stream` holds at least `count` messages (at most `within`), then returns them all.
pub async fn wait_for(url: &str, stream: &str, count: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let got = messages(url, stream).await;
        if got.len() >= count || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks what a consumer of the stream sees: each event once, each key's sequence 1, 2, 3… in stream
/// order, subjects that match the body, and no personal data; returns the events per `keyId`.
pub fn check_once_in_order(events: &[Value], personal: &[&str]) -> HashMap<String, Vec<Value>> {
    let mut ids = std::collections::HashSet::new();
    let mut per_key: HashMap<String, Vec<Value>> = HashMap::new();
    for e in events {
        let text = e.to_string();
        for p in personal {
            assert!(!text.contains(p), "personal data {p:?} in an event: {text}");
        }
        assert!(ids.insert(e["eventId"].as_str().unwrap().to_owned()), "an event twice: {e}");
        let subject = e["_subject"].as_str().unwrap();
        assert!(subject.ends_with(&format!(".{}", e["type"].as_str().unwrap())), "subject {subject} for {e}");
        per_key.entry(e["keyId"].as_str().unwrap().to_owned()).or_default().push(e.clone());
    }
    for (key, list) in &per_key {
        let seqs: Vec<i64> = list.iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=list.len() as i64).collect::<Vec<_>>(), "key {key}: out of order or missing");
    }
    per_key
}

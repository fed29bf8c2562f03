//! Connections against the real binary: a client too slow to send its request head, one that sends
//! nothing, and an idle keep-alive one are closed after their limits while other clients are served; past
//! the ceiling, new connections are turned away at once.

use std::process::{Child, Command};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;

/// The binary on port 0 with `env`, its address, and a guard that kills it. Its output is drained by a
/// thread, so a full pipe never stalls it.
struct Service {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &[(&str, &str)]) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("crm.db").display());
    let (child, addr) = crate::binary::serve(&["--store", &store], env);
    Service { child, addr, _dir: dir }
}

/// Waits (at most `limit`) until the server closes `conn`; how long that took from `since`, or `None`.
async fn closed_after(conn: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let end = since + limit;
    loop {
        match tokio::time::timeout_at(end, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue, // a response (the idle client's) or a refusal: keep reading
        }
    }
}

/// A complete request on a fresh connection; its status line.
async fn get_status(addr: &str, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text).lines().next().unwrap_or("").to_owned()
}

/// Opens connections in waves of twenty rather than all at once: a burst of hundreds of handshakes on a
/// loaded machine tests the kernel's accept queue, not the service's limits.
async fn pace(n: usize) {
    if n % 20 == 19 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(name: &str, times: &[Duration]) -> (Duration, Duration) {
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    eprintln!("{name}: {} connections closed after {:.2}-{:.2} s", times.len(), min.as_secs_f64(), max.as_secs_f64());
    (min, max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_idle_clients_are_closed_while_others_are_served() {
    let service = start(&[("CRM_HEADER_READ_TIMEOUT_MS", "2000"), ("CRM_IDLE_TIMEOUT_MS", "5000")]);
    let addr = service.addr.clone();
    let limit = Duration::from_secs(20);
    let (silent_n, slow_n, idle_n) = (100, 100, 40);

    let mut silent = Vec::new();
    for n in 0..silent_n {
        pace(n).await;
        let addr = addr.clone();
        silent.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            let since = Instant::now();
            closed_after(&mut conn, since, limit).await
        }));
    }
    let mut slow = Vec::new();
    for i in 0..slow_n {
        pace(i).await;
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            let since = Instant::now();
            let head = format!("POST {CREATE} HTTP/1.1\r\nHost: x\r\n");
            conn.write_all(head.as_bytes()).await.unwrap();
            // One more header line every 700 ms, never the blank line that ends the head.
            let (mut read, mut write) = conn.into_split();
            let trickle = tokio::spawn(async move {
                for n in 0.. {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let line = format!("X-Slow-{i}-{n}: still coming\r\n");
                    if write.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = [0u8; 256];
            let closed = match tokio::time::timeout_at(since + limit, read.read(&mut buf)).await {
                Err(_) => None,
                Ok(_) => Some(since.elapsed()),
            };
            trickle.abort();
            closed
        }));
    }
    let mut idle = Vec::new();
    for _ in 0..idle_n {
        let addr = addr.clone();
        idle.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            conn.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            // The response arrives (and the connection stays open: keep-alive); the idle limit starts.
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
            let since = Instant::now();
            closed_after(&mut conn, since, limit).await
        }));
    }

    // Meanwhile, other clients are served, over and over.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(7) {
        assert!(get_status(&addr, "/health/live").await.starts_with("HTTP/1.1 200"));
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("served {served} other requests meanwhile");

    for (name, tasks, at_least) in [
        ("silent", silent, Duration::from_millis(1500)),
        ("slow head", slow, Duration::from_millis(1500)),
        ("idle keep-alive", idle, Duration::from_millis(4500)),
    ] {
        let mut closed = Vec::new();
        let mut open = 0;
        for t in tasks {
            match t.await.unwrap() {
                Some(after) => closed.push(after),
                None => open += 1,
            }
        }
        assert_eq!(open, 0, "{open} {name} connections still open after 20 s ({} closed)", closed.len());
        let (min, _) = summary(name, &closed);
        // Closed by its own limit: the idle one lives past the head limit.
        assert!(min >= at_least, "{name} closed after {min:?}, before its limit");
    }
    assert!(get_status(&addr, "/health/live").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_ceiling_are_refused_at_once_and_sigterm_closes_idle_ones() {
    // A head limit far longer than the test: what closes a connection here is the ceiling.
    let service = start(&[("CRM_MAX_CONNECTIONS", "20"), ("CRM_HEADER_READ_TIMEOUT_MS", "60000")]);
    let addr = service.addr.clone();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Once all twenty are accepted, the next ones are answered 503 and closed, long before any limit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        let since = Instant::now();
        let mut text = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut text)).await;
        assert!(read.is_ok(), "refused and closed, not left waiting");
        let text = String::from_utf8_lossy(&text);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
        eprintln!("refused over the ceiling in {:?}", since.elapsed());
    }
    // A slot freed is a slot to serve.
    held.truncate(15);
    let mut status = String::new();
    for _ in 0..50 {
        status = get_status(&addr, "/health/live").await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // SIGTERM: the idle connections are closed and the process exits 0, without waiting for their limits.
    let mut service = service;
    let pid = service.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let since = Instant::now();
    for conn in held.iter_mut() {
        assert!(closed_after(conn, since, Duration::from_secs(20)).await.is_some(), "closed at shutdown");
    }
    let status = tokio::task::block_in_place(|| service.child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
}

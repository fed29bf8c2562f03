//! The log lines' way out: requests append their formatted line to a shared buffer, and one thread writes
//! what has gathered with one system call.
//!
//! The writer thread is not woken for every line. After a write it pauses ([`PAUSE`]) and lets the next lines
//! gather; only when it found nothing to write does it sleep until a request wakes it. tracing-appender's
//! non-blocking writer, used before, blocked on its channel after every write, so under load each handful
//! of lines cost a wake-up of that thread: with `/health/live` at 64 connections, 0.17 context switches a
//! request against 0.03 with the request lines filtered out, and 130 000 requests/s against 152 000.
//!
//! Nothing is dropped: past [`LIMIT`] bytes waiting, a request waits for the writer to take them. The
//! [`Guard`] writes what is left when the process ends.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after a write. A line waits at most about this long (plus the
/// write before it) while the service is busy, and not at all when it is quiet.
pub const PAUSE: Duration = Duration::from_micros(500);

/// Bytes waiting beyond which a request waits for the writer (a stdout that is not read, say).
pub const LIMIT: usize = 8 << 20;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer found nothing and waits to be woken.
    sleeping: bool,
    /// Requests waiting for room (the buffer past `LIMIT`); only then does a write need to wake anyone.
    waiting_for_room: usize,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending cannot leave the buffer inconsistent beyond a partial line: go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the subscriber writes its lines (a `MakeWriter`).
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
}

/// Keep it while the process runs: dropping it writes the lines still waiting and stops the thread.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`.
pub fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<(Lines, Guard)> {
    let shared = Arc::new(Shared::default());
    let theirs = shared.clone();
    let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || run(&theirs, out))?;
    Ok((Lines { shared: shared.clone() }, Guard { shared, thread: Some(thread) }))
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            while state.pending.is_empty() {
                if state.closed {
                    let _ = out.flush();
                    return;
                }
                state.sleeping = true;
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.sleeping = false;
            std::mem::swap(&mut state.pending, &mut batch);
            if state.waiting_for_room > 0 {
                shared.room.notify_all();
            }
            state.closed
        };
        // A failing stdout (closed by the reader) must not stop the service: the lines are lost, as they
        // would be with a direct write.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > LIMIT / 8 {
            batch = Vec::new(); // a burst's buffer is not kept for ever
        }
        if !closed {
            std::thread::sleep(PAUSE);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: appends to the shared buffer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        while state.pending.len() >= LIMIT && !state.closed {
            state.waiting_for_room += 1;
            state = self.shared.room.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.waiting_for_room -= 1;
        }
        state.pending.extend_from_slice(buf);
        if state.sleeping {
            state.sleeping = false;
            self.shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: &self.shared }
    }
}

#[cfg(test)]
mod tests {
    use super::{spawn, LIMIT};
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tracing_subscriber::fmt::MakeWriter;

    /// An output the test can read, with the sizes of the writes it received.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<(Vec<u8>, Vec<usize>)>>);
    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut out = self.0.lock().unwrap();
            out.0.extend_from_slice(buf);
            out.1.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_of_every_thread_arrives_whole_and_in_its_threads_order() {
        let out = Out::default();
        let (lines, guard) = spawn(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 300));
                        lines.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order or missing");
            assert_eq!(words[4].len(), i % 300, "line {i} of thread {t} cut");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        assert!(writes.len() < 20_000, "{} writes for 20 000 lines: lines were not gathered", writes.len());
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let out = Out::default();
        let (lines, _guard) = spawn(out.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // the writer is asleep, waiting for a line
        lines.make_writer().write_all(b"alone\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().0 != b"alone\n" {
            assert!(Instant::now() < deadline, "the line was not written while the service was quiet");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_writer_that_does_not_keep_up_makes_requests_wait_instead_of_dropping_lines() {
        /// An output that takes nothing until the test opens it.
        #[derive(Clone)]
        struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Out);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, changed) = &*self.0;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = changed.wait(open).unwrap();
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let gate = Gate(Default::default(), out.clone());
        let (lines, guard) = spawn(gate.clone()).unwrap();
        let line = vec![b'y'; 1024];
        let total = 3 * LIMIT / line.len(); // three times what may wait
        let producer = {
            let lines = lines.clone();
            let line = line.clone();
            std::thread::spawn(move || (0..total).for_each(|_| lines.make_writer().write_all(&line).unwrap()))
        };
        // The producer cannot finish while the output takes nothing: at most LIMIT (plus one line) waits,
        // and one batch is held by the writer.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!producer.is_finished(), "all lines were taken while the output was closed");
        *gate.0 .0.lock().unwrap() = true;
        gate.0 .1.notify_all();
        producer.join().unwrap();
        drop(guard);
        assert_eq!(out.0.lock().unwrap().0.len(), total * line.len(), "lines were dropped");
    }
}

//! A VFS over SQLite's default one that hands the write-ahead log's writes to the operating system in
//! runs instead of piece by piece.
//!
//! SQLite writes each frame of its WAL with two `pwrite` calls (the 24-byte frame header, then the page), one
//! after the other at increasing offsets, and calls `fsync` once the commit's last frame is written. A commit
//! of the writer's batches is some 70 frames, so some 140 system calls; on the machines the service was
//! measured on, a system call costs more than copying the page it carries (`docs/bench/wal-frame-write.c`).
//!
//! Here, a WAL file keeps the writes that continue one another (each starting where the one before ended) in
//! a buffer, and writes the buffer in one call before anything else is asked of the file: a sync, a read, its
//! size, a truncation, a lock, a file control, its closing, or a write elsewhere in it. So the file is, at
//! every call but a write, exactly what it would have been without the buffer, and the same writes reach it
//! in the same order, joined where they touch. What the buffer holds and a plain `pwrite` would already have
//! given the kernel is only what SQLite has not yet synced.
//!
//! That is safe only on connections that sync the WAL at every commit (`synchronous = FULL`, which
//! [`crate::connect`] sets): SQLite makes a commit visible to other connections after its sync, so the frames
//! are in the file by then. With `synchronous = NORMAL` SQLite does not sync at commit, and relies on the
//! kernel holding what it wrote for other connections and for a crash of the process; a buffer would break
//! both. Reader connections do not write and use the default VFS.
//!
//! Every other file (the database, its shared memory, temporary files) goes straight through to the default
//! VFS. So do the WAL's other calls, once its buffer is written.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections give to open through this VFS.
pub(crate) const NAME: &CStr = c"integration-service-wal";

/// A buffer past this size is written before the next write is added: a transaction far larger than a
/// batch (a migration) writes its WAL a mebibyte at a time.
const MAX_BUFFER: usize = 1 << 20;

/// The most the default VFS writes in one call: its `unixWrite` takes less than 128 KiB at a time (it masks
/// the length with `0x1ffff`), so the buffer goes to it in pieces of 31 pages of 4 KiB.
const MAX_WRITE: usize = 31 * 4096;

/// The file object SQLite allocates for each file of this VFS (`szOsFile` bytes): this header, and the
/// default VFS's own file object right after it.
#[repr(C)]
struct File {
    /// First, as SQLite reads `pMethods` from the start of every file object.
    base: ffi::sqlite3_file,
    /// The default VFS's file, in the same allocation.
    inner: *mut ffi::sqlite3_file,
    /// For a WAL file, the writes waiting to be written; `None` for any other file.
    pending: Option<Pending>,
}

struct Pending {
    /// The offset of the buffer's first byte in the file.
    start: i64,
    bytes: Vec<u8>,
}

/// Where the default VFS's file object starts within ours.
const INNER_OFFSET: usize = std::mem::size_of::<File>().next_multiple_of(16);

static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name, or SQLite's error code when it could not be.
pub(crate) fn register() -> Result<&'static str, c_int> {
    let registered = REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find with a null name returns the default VFS, which SQLite never frees; the
        // VFS built here copies it but for its name, the file size and xOpen, and is leaked, so it outlives
        // every connection, as sqlite3_vfs_register requires.
        unsafe {
            let rc = ffi::sqlite3_initialize();
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            let default = ffi::sqlite3_vfs_find(ptr::null());
            if default.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let mut vfs = *default;
            vfs.szOsFile = (INNER_OFFSET + (*default).szOsFile as usize) as c_int;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.pAppData = default.cast();
            vfs.xOpen = Some(open);
            let vfs = Box::into_raw(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, 0);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            Ok(())
        }
    });
    match registered {
        Ok(_) => Ok(NAME.to_str().expect("the name is ASCII")),
        Err(rc) => Err(*rc),
    }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = (*vfs).pAppData as *mut ffi::sqlite3_vfs;
    let inner = file.cast::<u8>().add(INNER_OFFSET).cast::<ffi::sqlite3_file>();
    // SQLite calls no method of a file whose pMethods is null, so it stays null until the file is ready.
    let file = file.cast::<File>();
    ptr::write(ptr::addr_of_mut!((*file).base.pMethods), ptr::null());
    let Some(default_open) = (*default).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = default_open(default, name, inner, flags, out_flags);
    let methods = (*inner).pMethods;
    if methods.is_null() {
        return rc;
    }
    let pending = (flags & ffi::SQLITE_OPEN_WAL != 0).then(|| Pending { start: 0, bytes: Vec::new() });
    ptr::write(ptr::addr_of_mut!((*file).inner), inner);
    ptr::write(ptr::addr_of_mut!((*file).pending), pending);
    let ours: &'static ffi::sqlite3_io_methods = match (*methods).iVersion {
        1 => &METHODS_V1,
        2 => &METHODS_V2,
        _ => &METHODS_V3,
    };
    (*file).base.pMethods = ours;
    rc
}

/// The file object and the default VFS's methods for it.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (&'a mut File, *mut ffi::sqlite3_file, &'a ffi::sqlite3_io_methods) {
    let file = &mut *file.cast::<File>();
    let inner = file.inner;
    (file, inner, &*(*inner).pMethods)
}

#[cfg(test)]
thread_local! {
    /// The writes this thread handed to the default VFS for WAL files: tests run side by side, each on its
    /// own thread and connection.
    static WAL_WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Writes what the buffer holds, if anything; the buffer is empty after, whatever the outcome.
unsafe fn flush(file: &mut File, inner: *mut ffi::sqlite3_file, methods: &ffi::sqlite3_io_methods) -> c_int {
    let Some(pending) = file.pending.as_mut() else {
        return ffi::SQLITE_OK;
    };
    if pending.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = methods.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut rc = ffi::SQLITE_OK;
    let mut at = pending.start;
    for chunk in pending.bytes.chunks(MAX_WRITE) {
        #[cfg(test)]
        WAL_WRITES.with(|n| n.set(n.get() + 1));
        rc = write(inner, chunk.as_ptr().cast(), chunk.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += chunk.len() as i64;
    }
    pending.bytes.clear();
    if pending.bytes.capacity() > MAX_BUFFER {
        pending.bytes.shrink_to(MAX_BUFFER);
    }
    rc
}

/// Writes the buffer, then runs `then` on the default VFS's file; a failed write is the call's answer.
macro_rules! flushed {
    ($file:expr, $method:ident, |$f:ident, $m:ident| $then:expr) => {{
        let (file, $f, methods) = parts($file);
        let rc = flush(file, $f, methods);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match methods.$method {
            Some($m) => $then,
            None => ffi::SQLITE_MISUSE,
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let (ours, inner, methods) = parts(file);
    // A close comes after the last commit's sync, so nothing is waiting; if something were, it was never
    // synced and SQLite does not count on it.
    let flushed = flush(ours, inner, methods);
    let rc = match methods.xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    ptr::drop_in_place(ptr::addr_of_mut!(ours.pending));
    ours.base.pMethods = ptr::null();
    if rc == ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, offset: i64) -> c_int {
    flushed!(file, xRead, |f, m| m(f, buf, amount, offset))
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let (ours, inner, methods) = parts(file);
    let Some(write) = methods.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Some(pending) = ours.pending.as_mut() else {
        return write(inner, data, amount, offset);
    };
    let len = amount.max(0) as usize;
    let follows = pending.start + pending.bytes.len() as i64 == offset;
    // A write too large to keep goes straight through, after what is kept, so that the writes still reach
    // the file in SQLite's order.
    let alone = len > MAX_WRITE;
    if !pending.bytes.is_empty() && (alone || !follows || pending.bytes.len() + len > MAX_BUFFER) {
        let rc = flush(ours, inner, methods);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if alone {
        return write(inner, data, amount, offset);
    }
    let pending = ours.pending.as_mut().expect("a WAL file keeps its buffer");
    if pending.bytes.is_empty() {
        pending.start = offset;
    }
    pending.bytes.extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), len));
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed!(file, xTruncate, |f, m| m(f, size))
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed!(file, xSync, |f, m| m(f, flags))
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed!(file, xFileSize, |f, m| m(f, size))
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed!(file, xLock, |f, m| m(f, level))
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed!(file, xUnlock, |f, m| m(f, level))
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    flushed!(file, xCheckReservedLock, |f, m| m(f, out))
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    flushed!(file, xFileControl, |f, m| m(f, op, arg))
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xSectorSize.map_or(4096, |m| m(inner))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xDeviceCharacteristics.map_or(0, |m| m(inner))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xShmMap.map_or(ffi::SQLITE_IOERR, |m| m(inner, region, size, extend, out))
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xShmLock.map_or(ffi::SQLITE_IOERR, |m| m(inner, offset, n, flags))
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let (_, inner, methods) = parts(file);
    if let Some(m) = methods.xShmBarrier {
        m(inner)
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xShmUnmap.map_or(ffi::SQLITE_OK, |m| m(inner, delete))
}

unsafe extern "C" fn fetch(file: *mut ffi::sqlite3_file, offset: i64, amount: c_int, out: *mut *mut c_void) -> c_int {
    let (_, inner, methods) = parts(file);
    match methods.xFetch {
        Some(m) => m(inner, offset, amount, out),
        None => {
            *out = ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, page: *mut c_void) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xUnfetch.map_or(ffi::SQLITE_OK, |m| m(inner, offset, page))
}

/// The methods of each version: a file offers what the default VFS's file of the same version offers.
const fn methods(version: c_int) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: version,
        xClose: Some(close),
        xRead: Some(read),
        xWrite: Some(write),
        xTruncate: Some(truncate),
        xSync: Some(sync),
        xFileSize: Some(file_size),
        xLock: Some(lock),
        xUnlock: Some(unlock),
        xCheckReservedLock: Some(check_reserved_lock),
        xFileControl: Some(file_control),
        xSectorSize: Some(sector_size),
        xDeviceCharacteristics: Some(device_characteristics),
        xShmMap: if version >= 2 { Some(shm_map) } else { None },
        xShmLock: if version >= 2 { Some(shm_lock) } else { None },
        xShmBarrier: if version >= 2 { Some(shm_barrier) } else { None },
        xShmUnmap: if version >= 2 { Some(shm_unmap) } else { None },
        xFetch: if version >= 3 { Some(fetch) } else { None },
        xUnfetch: if version >= 3 { Some(unfetch) } else { None },
    }
}

static METHODS_V1: ffi::sqlite3_io_methods = methods(1);
static METHODS_V2: ffi::sqlite3_io_methods = methods(2);
static METHODS_V3: ffi::sqlite3_io_methods = methods(3);

#[cfg(test)]
mod tests {
    use super::WAL_WRITES;
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    fn wal_writes() -> u64 {
        WAL_WRITES.with(|n| n.get())
    }

    /// A connection of the default VFS, as the store's readers open.
    fn reader(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    fn writer(path: &Path) -> Connection {
        let conn = crate::connect(path).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, body BLOB NOT NULL)").unwrap();
        conn
    }

    /// Inserts rows `from..to`, each with a 1 000-byte body, in one transaction.
    fn insert(conn: &Connection, from: i64, to: i64) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for n in from..to {
            conn.execute("INSERT INTO t (n, body) VALUES (?1, zeroblob(1000))", [n]).unwrap();
            conn.execute("UPDATE t SET body = randomblob(1000) WHERE n = ?1", [n]).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_commit_reaches_the_wal_in_a_few_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let conn = writer(&path);
        insert(&conn, 0, 10);
        let before = wal_writes();
        // About 75 pages: without the buffer, SQLite's two writes a frame would be some 150.
        insert(&conn, 10, 300);
        let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1)).unwrap();
        let writes = wal_writes() - before;
        assert!(frames >= 70, "the transaction wrote {frames} frames");
        assert!((1..=5).contains(&writes), "{writes} writes for some {frames} frames");
    }

    #[test]
    fn every_connection_reads_what_was_committed_while_the_writer_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let conn = writer(&path);
        let other = reader(&path);
        for round in 0..20 {
            insert(&conn, round * 50, round * 50 + 50);
            // The reader has its own handle on the WAL: it sees the frames only if they are in the file.
            assert_eq!(count(&other), round * 50 + 50);
            let check: String = other.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
            assert_eq!(check, "ok");
        }
        // Checkpoints in between copy the WAL into the database: nothing of it may be missing.
        drop(conn);
        let check: String = reader(&path).query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        assert_eq!(count(&reader(&path)), 1000);
    }

    #[test]
    fn each_file_object_has_room_for_the_default_vfs_one_after_ours() {
        super::register().unwrap();
        // SAFETY: both VFSes are registered and never freed.
        let (ours, default) = unsafe {
            (*rusqlite::ffi::sqlite3_vfs_find(super::NAME.as_ptr()), *rusqlite::ffi::sqlite3_vfs_find(std::ptr::null()))
        };
        assert_eq!(ours.szOsFile as usize, super::INNER_OFFSET + default.szOsFile as usize);
        assert!(super::INNER_OFFSET >= std::mem::size_of::<super::File>());
    }

    #[test]
    fn memory_mapped_reads_go_through_to_the_default_vfs() {
        // The writer does not map the file, but a connection of this VFS that does must work: SQLite then
        // calls the files' xFetch and xUnfetch.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let conn = writer(&path);
        conn.execute_batch("PRAGMA mmap_size = 4194304").unwrap();
        insert(&conn, 0, 200);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        let mapped: i64 = conn.query_row("PRAGMA mmap_size", [], |r| r.get(0)).unwrap();
        assert_eq!(mapped, 4_194_304);
        assert_eq!(count(&conn), 200);
        let lengths: i64 = conn.query_row("SELECT sum(length(body)) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(lengths, 200_000);
    }

    #[test]
    fn a_transaction_larger_than_the_cache_reads_back_the_pages_it_spilled() {
        // With a cache of 20 pages, SQLite writes changed pages to the WAL before the commit and reads them
        // back from there: those reads must see the writes still in the buffer.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let conn = writer(&path);
        conn.execute_batch("PRAGMA cache_size = 20").unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for n in 0..2_000i64 {
            conn.execute("INSERT INTO t (n, body) VALUES (?1, randomblob(300))", [n]).unwrap();
        }
        // Read every row back inside the transaction, then change each once more.
        assert_eq!(count(&conn), 2_000);
        conn.execute("UPDATE t SET body = zeroblob(200 + n % 7)", []).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        let other = reader(&path);
        let lengths: i64 = other.query_row("SELECT sum(length(body)) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(lengths, (0..2_000i64).map(|n| 200 + n % 7).sum::<i64>());
        let check: String = other.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }
}

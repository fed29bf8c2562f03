//! The `integration-service` binary: `serve` and `migrate`. All the work is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use integration_service::api::auth::{ApiKey, Role};
use integration_service::config::{Overrides, Settings};
use integration_service::startup::{self, shutdown_signal, Application, Opened};
use integration_service::telemetry;

/// mimalloc instead of the C library's allocator: a request allocates and frees dozens of small blocks
/// (headers, its id, its log line, futures), and under callgrind glibc's malloc and free were about a
/// quarter of the instructions of a `GET /health/live`.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// mimalloc, asked for plain blocks when the layout's alignment is one every block of mimalloc has.
///
/// The `mimalloc` crate's allocator asks for an aligned block on every allocation (`mi_malloc_aligned`),
/// even for an alignment of 8, which every mimalloc block has (its blocks are whole machine words, in pages
/// that start aligned): above 1 KiB that call takes mimalloc's generic path and over-allocates to align.
/// This one asks for a plain block (`mi_malloc`) when the alignment is at most a word, and for an aligned
/// one otherwise; blocks of either kind are freed by `mi_free`. Not 16, as the standard library does over
/// the C library's `malloc`: mimalloc has blocks of 24, 40 or 56 bytes, 8-aligned only.
struct Allocator;

/// The alignment every mimalloc block has: a machine word (`MI_INTPTR_SIZE`).
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

fn plain(layout: std::alloc::Layout) -> bool {
    layout.align() <= PLAIN_ALIGN
}

// SAFETY: every function hands the layout's size to mimalloc, and its alignment too unless it is at most a
// word, which every block has (see above); mimalloc returns blocks of at least that size and alignment, or
// null, and frees or reallocates only blocks it returned.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout) {
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout) {
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if plain(layout) {
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        }
    }
}

/// mimalloc's `arena_eager_commit` (option 4 of its `mi_option_e`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Makes mimalloc commit its arenas as they are used rather than whole when they are reserved (its default on
/// Linux), unless the variable `MIMALLOC_ARENA_EAGER_COMMIT` says otherwise. With eager commit, the memory it
/// frees is only marked free to the kernel and stays counted in the process's resident set: the benchmark's
/// `/health/live` peaked at 37 MiB with it and 25 MiB without, its SQLite mix at 73 MiB and 59 MiB, at the
/// same throughput.
///
/// A default has to be set before mimalloc reads its options, which it does in its own constructor at
/// program load (it reserves the first arena at the first allocation, before `main`): this function is a
/// constructor of a higher priority (`.init_array.NNNNN` entries run before plain `.init_array` ones).
extern "C" fn tune_allocator() {
    // SAFETY: only sets the default of one of mimalloc's options, by its documented number; the function
    // touches nothing but mimalloc's static option table and allocates nothing.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00200"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[derive(Parser)]
#[command(name = "integration-service", version, about = "Keeps the CRM lead/opportunity lifecycle right")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (applies pending migrations first).
    Serve(Overrides),
    /// Apply pending migrations to the store and exit (for salesforce: to its local store).
    Migrate(Overrides),
    /// Open the configured store and check it, then exit: for salesforce, fetch a token and verify the
    /// field and picklist mapping against the org. Exit code 0 when all is well, 2 with one line otherwise.
    Check(Overrides),
    /// Make a new API key for a channel (or for reporting): prints the key (once) and the configuration
    /// line to add.
    GenerateKey {
        /// The channel the key belongs to, e.g. MOBILE_APP; for a reporting key, the name it is logged under
        #[arg(long)]
        channel: String,
        /// `channel` (the lifecycle operations and reads) or `reporting` (the reports and nothing else)
        #[arg(long, default_value = "channel")]
        role: String,
    },
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("integration-service: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = match &cli.command {
        Command::Serve(o) | Command::Migrate(o) | Command::Check(o) => o,
        Command::GenerateKey { channel, role } => return generate_key(channel, role),
    };
    let settings = match Settings::load(overrides) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let _logs = telemetry::init(settings.log_format, &settings.log_filter);
    match cli.command {
        Command::Migrate(_) => migrate(&settings),
        Command::Check(_) => check(&settings),
        _ => serve(&settings),
    }
}

fn generate_key(channel: &str, role: &str) -> ExitCode {
    let channel = match lifecycle::Channel::parse(channel) {
        Ok(c) => c,
        Err(e) => return fail(format!("invalid --channel {channel:?}: {e}")),
    };
    let role = match Role::parse(role) {
        Ok(r) => r,
        Err(e) => return fail(format!("invalid --role: {e}")),
    };
    match ApiKey::generate_with(&channel, role) {
        Ok((key, entry)) => {
            let holder = if role == Role::Reporting { "reporting" } else { "the channel" };
            println!("API key for {channel} (shown only now; give it to {holder}, keep it in a secret store):");
            println!("{key}");
            println!();
            println!("Configure the service with its hash, in the environment:");
            println!("CRM_API_KEYS={}", entry.entry());
            println!("or in the --config file:");
            print!("[[api_keys]]\nchannel = \"{channel}\"\nsha256 = \"{}\"\n", entry.sha256_hex());
            if role == Role::Reporting {
                println!("role = \"reporting\"");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Opens the store as `serve` would (migrations, token, mapping check) and closes it again.
fn check(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        match Opened::open(settings).await {
            Ok(opened) => {
                opened.shutdown().await;
                println!("{:?}: the store is reachable and its mapping is complete", settings.store);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        }
    })
}

fn migrate(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(startup::migrate(settings)) {
        Ok((store, n)) => {
            println!("{store:?}: {n} migration(s) applied");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn serve(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => return fail(e),
        };
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("server error: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::ALLOCATOR;

    /// Every block has the size and alignment asked for, keeps what is written into it through a
    /// reallocation, and is freed: word-aligned layouts take mimalloc's plain calls, the others its aligned
    /// ones, at sizes on both sides of mimalloc's small-block limit and of its odd size classes.
    #[test]
    fn blocks_have_the_layouts_asked_for() {
        let sizes = [1, 7, 8, 12, 24, 40, 56, 100, 1000, 1024, 1025, 4000, 70_000];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // SAFETY: a non-zero size; each block is used within its size and freed once, with the
                    // layout it has.
                    unsafe {
                        // Several at once: consecutive blocks of a size class sit at different offsets.
                        let blocks: Vec<*mut u8> = (0..4)
                            .map(|_| if zeroed { ALLOCATOR.alloc_zeroed(layout) } else { ALLOCATOR.alloc(layout) })
                            .collect();
                        for &p in &blocks {
                            assert!(!p.is_null());
                            assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                            if zeroed {
                                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                            }
                            std::ptr::write_bytes(p, 0xA5, size);
                        }
                        blocks.into_iter().for_each(|p| ALLOCATOR.dealloc(p, layout));
                    }
                }
                for new_size in [size / 2 + 1, size * 3] {
                    // SAFETY: as above; the block is freed once, with the layout it has after the reallocation.
                    unsafe {
                        let p = ALLOCATOR.alloc(layout);
                        std::ptr::write_bytes(p, 0xA5, size);
                        let q = ALLOCATOR.realloc(p, layout, new_size);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "realloc {size} -> {new_size}, align {align}");
                        assert!(std::slice::from_raw_parts(q, size.min(new_size)).iter().all(|&b| b == 0xA5));
                        ALLOCATOR.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                    }
                }
            }
        }
    }
}

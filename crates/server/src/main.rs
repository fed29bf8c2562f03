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
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

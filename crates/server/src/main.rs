//! The `integration-service` binary: `serve` and `migrate`. All the work is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use integration_service::config::{Overrides, Settings, StoreUrl};
use integration_service::startup::{pg_config, shutdown_signal, Application};
use integration_service::telemetry;

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
    /// Apply pending migrations to the store and exit.
    Migrate(Overrides),
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("integration-service: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve(overrides) | Command::Migrate(overrides)) = &cli.command;
    let settings = match Settings::load(overrides) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    telemetry::init(settings.log_format, &settings.log_filter);
    match cli.command {
        Command::Migrate(_) => migrate(&settings),
        Command::Serve(_) => serve(&settings),
    }
}

fn migrate(settings: &Settings) -> ExitCode {
    let applied = match &settings.store {
        StoreUrl::Sqlite(path) => store_sqlite::migrate(path).map_err(|e| e.to_string()),
        StoreUrl::Postgres(url) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(store_postgres::migrate(&pg_config(settings, url))).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot start the runtime: {e}")),
        },
        StoreUrl::Salesforce => Err("migrate: the salesforce store has no migrations".into()),
    };
    match applied {
        Ok(n) => {
            println!("{:?}: {n} migration(s) applied", settings.store);
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

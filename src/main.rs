//! `walrelay`: copy a PostgreSQL cluster to another machine and keep it current.
//!
//! This binary only parses the command line and orchestrates; the work lives in the library crates
//! (`walrelay-client`, `walrelay-basebackup`, `walrelay-walreceiver`, `walrelay-archive`,
//! `walrelay-logical`).

mod archive_cmds;
mod backup;
mod bootstrap;
mod check;
mod connect;
mod demo;
mod exit;
mod metrics;
mod receive;
mod subset;
mod wal_stream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// PostgreSQL standby seeding and WAL streaming.
#[derive(Parser, Debug)]
#[command(name = "walrelay", version, about, long_about = None, disable_help_flag = true)]
struct Cli {
    /// Print help (`-h` is the host, as in pg_basebackup).
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Also WALRELAY_LOG.
    #[arg(long, global = true, env = "WALRELAY_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seed a replicant: base backup + WAL stream + manifest check + standby configuration.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Store a base backup in the archive (directory or bucket); `backup list`, `backup delete`.
    Backup(backup::BackupArgs),
    /// Show the whole job on a throwaway local primary: bootstrap a standby, watch rows arrive.
    Demo(demo::DemoArgs),
    /// Check that a server can feed a replicant (version, wal_level, free WAL senders, slot state).
    Check(check::CheckArgs),
    /// Stream WAL into an archive directory or a standby's pg_wal, durably, forever.
    Receive(receive::ReceiveArgs),
    /// restore_command: copy one WAL file from the archive (exit 1 if absent, >125 if damaged).
    Restore(archive_cmds::RestoreArgs),
    /// Check an archive: gaps, timelines, checksums, every page header and record CRC.
    Verify(archive_cmds::VerifyArgs),
    /// Remove WAL older than a backup or WAL file from an archive (pg_archivecleanup semantics).
    Prune(archive_cmds::PruneArgs),
    /// Copy chosen tables into another database and keep them current (logical replication).
    Subset(subset::SubsetArgs),
    /// Background fetcher started by `restore --prefetch` (not for use by hand).
    #[command(hide = true)]
    RestorePrefetch(archive_cmds::PrefetchArgs),
}

fn init_logging(filter: &str) {
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // object_store logs every retry at info; walrelay reports what failed once, where it is
    // handled (a filter naming object_store itself decides otherwise).
    if !filter.to_string().contains("object_store") {
        if let Ok(quiet) = "object_store=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// One line: the error and its causes, joined — never a backtrace.
fn report_error(e: &anyhow::Error) {
    eprintln!("walrelay: error: {}", exit::one_line(e));
}

/// Parses the command line. A usage error under `restore` must not exit 2: PostgreSQL reads any exit
/// status up to 125 from a `restore_command` as "file not found" and would end recovery early on a
/// typo, so it exits with [`walrelay_archive::RESTORE_EXIT_ERROR`] instead.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            let is_info = matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            if is_info {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return Err(ExitCode::from(2));
            }
            // One line: clap's first line (the cause) — with the indented lines that list what it
            // announces ("…were not provided:") — and where to read more.
            let text = e.to_string();
            let mut lines = text.lines();
            let mut first = lines
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_string();
            if first.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| l.starts_with(' '))
                    .map(str::trim)
                    .collect();
                first = format!("{} {}", first, listed.join(", "));
            }
            let known: Vec<String> = <Cli as clap::CommandFactory>::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let sub = std::env::args().nth(1).filter(|a| known.contains(a));
            eprintln!(
                "walrelay: error: {first} (see walrelay {}--help)",
                sub.as_deref().map(|s| format!("{s} ")).unwrap_or_default()
            );
            let under_restore = sub.as_deref() == Some("restore");
            let code = if under_restore {
                walrelay_archive::RESTORE_EXIT_ERROR
            } else {
                exit::USAGE
            };
            Err(ExitCode::from(code as u8))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The demo narrates itself; its library logs would only interleave with the story.
    let quiet_demo = matches!(cli.command, Command::Demo(_)) && cli.log == "info";
    init_logging(if quiet_demo { "warn" } else { &cli.log });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walrelay: error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let command = async move {
        match cli.command {
            Command::Bootstrap(a) => bootstrap::run(a).await,
            Command::Backup(a) => backup::run(a).await,
            Command::Check(a) => check::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Receive(a) => receive::run(a).await,
            Command::Restore(a) => archive_cmds::run_restore(a).await,
            Command::Verify(a) => archive_cmds::run_verify(a).await,
            Command::Prune(a) => archive_cmds::run_prune(a).await,
            Command::Subset(a) => subset::run(a).await,
            Command::RestorePrefetch(a) => archive_cmds::run_prefetch(a).await,
        }
    };
    let result = runtime.block_on(async {
        match tokio::spawn(command).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the command stopped unexpectedly: {e}")),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            report_error(&e);
            ExitCode::from(exit::code(exit::class_of(&e)) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}

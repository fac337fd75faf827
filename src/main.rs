//! `walrelay`: copy a PostgreSQL cluster to another machine and keep it current.
//!
//! This binary only parses the command line and orchestrates; the work lives in the library crates
//! (`walrelay-client`, `walrelay-basebackup`, `walrelay-walreceiver`, `walrelay-archive`,
//! `walrelay-logical`, `walrelay-store`, `walrelay-relay`).

mod archive_cmds;
mod backup;
mod bootstrap;
mod check;
mod connect;
mod demo;
mod exit;
mod logging;
mod metrics;
mod pg_conf;
mod progress;
mod receive;
mod serve;
mod standby_conf;
mod subset;
mod usage;
mod wal_dirs;
mod wal_stream;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// PostgreSQL standby seeding and WAL streaming.
#[derive(Parser, Debug)]
#[command(name = "walrelay", version, about, long_about = None, disable_help_flag = true)]
struct Cli {
    /// Print help (also `-?`, as PostgreSQL's tools; `-h` is the host, as in pg_basebackup).
    #[arg(short = '?', long, global = true, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Also WALRELAY_LOG.
    #[arg(long, global = true, env = "WALRELAY_LOG", default_value = "info", value_parser = logging::parse_filter)]
    log: String,
    /// Log format: text (for people) or json (one object per line, for log shippers).
    #[arg(
        long = "log-format",
        global = true,
        value_name = "text|json",
        default_value = "text"
    )]
    log_format: logging::LogFormat,
    /// More detail: debug logs (-vv: trace); under restore, one line per file.
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    /// Relay: one connection to the primary, the replication protocol served to many standbys.
    Serve(serve::ServeArgs),
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

/// One line: the error and its causes, joined — never a backtrace.
fn report_error(e: &anyhow::Error, code: i32) {
    let line = exit::one_line(e);
    match logging::format() {
        // A log shipper reading --log-format json gets the fatal error as one of its objects.
        logging::LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "level": "ERROR",
                "message": format!("walrelay: error: {line}"),
                "exit_code": code,
            })
        ),
        logging::LogFormat::Text => eprintln!("walrelay: error: {line}"),
    }
}

/// Parses the command line (options also from `WALRELAY_*`, see [`usage`]). A usage error prints
/// clap's message on one line (see [`usage::render`]) and exits 2 — except under `restore`:
/// PostgreSQL reads any exit status up to 125 from a `restore_command` as "file not found" and would
/// end recovery early on a typo, so it exits with [`walrelay_archive::RESTORE_EXIT_ERROR`] instead.
fn parse_cli() -> Result<Cli, ExitCode> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `walrelay -h` asks for help: at the top level there is no host to name.
    if argv.len() == 2 && argv[1] == "-h" {
        argv[1] = "--help".into();
    }
    let cmd = usage::with_env_vars(Cli::command());
    let sub = usage::subcommand_of(&cmd, &argv);
    let parsed = cmd
        .try_get_matches_from(&argv)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return Err(ExitCode::SUCCESS);
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return Err(ExitCode::from(exit::USAGE as u8));
                }
                _ => {}
            }
            eprintln!("{}", usage::render(&e, sub.as_deref()));
            let code = if sub.as_deref() == Some("restore") {
                walrelay_archive::RESTORE_EXIT_ERROR
            } else {
                exit::USAGE
            };
            Err(ExitCode::from(code as u8))
        }
    }
}

/// How a command ended when it did not return an exit status.
enum Failure {
    Error(anyhow::Error),
    Panicked,
}

/// A panic (a bug) is reported as one line, like every other failure, instead of Rust's
/// message and its note about backtraces; `RUST_BACKTRACE` set keeps the standard report.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "walrelay: error: internal error (a bug in walrelay, please report it): {}{at}",
            payload.replace('\n', " ")
        );
    }));
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut cli = cli;
    // The demo narrates itself; its library logs would only interleave with the story.
    let quiet_demo = matches!(cli.command, Command::Demo(_)) && cli.log == "info";
    let is_restore = matches!(cli.command, Command::Restore(_));
    let filter = match (quiet_demo, cli.verbose) {
        (true, 0) => "warn",
        // restore's -v is a line per file, not debug logs in the server's log.
        _ if is_restore => cli.log.as_str(),
        (_, 0) => cli.log.as_str(),
        // -v raises the default level only; an explicit --log wins.
        (_, 1) if cli.log == "info" => "debug",
        (_, _) if cli.log == "info" => "trace",
        _ => cli.log.as_str(),
    };
    logging::init(filter, cli.log_format);
    if let Command::Restore(a) = &mut cli.command {
        a.verbose = cli.verbose > 0;
        // PostgreSQL runs restore_command once per file: from a directory archive, no runtime.
        if archive_cmds::restore_is_local(a) {
            let code = archive_cmds::run_restore_local(a);
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    }
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
            Command::Serve(a) => serve::run(a).await,
            Command::Restore(a) => archive_cmds::run_restore(a).await,
            Command::Verify(a) => archive_cmds::run_verify(a).await,
            Command::Prune(a) => archive_cmds::run_prune(a).await,
            Command::Subset(a) => subset::run(a).await,
            Command::RestorePrefetch(a) => archive_cmds::run_prefetch(a).await,
        }
    };
    let result = runtime.block_on(async {
        match tokio::spawn(command).await {
            Ok(r) => r.map_err(Failure::Error),
            Err(_) => Err(Failure::Panicked),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(Failure::Error(e)) => {
            let code = exit::code(exit::exit_class(&e));
            report_error(&e, code);
            ExitCode::from(code as u8)
        }
        // The panic hook printed the line. Under restore_command, 1 would read as "not in the
        // archive" and end recovery early: a bug must stop it instead.
        Err(Failure::Panicked) if is_restore => {
            ExitCode::from(walrelay_archive::RESTORE_EXIT_ERROR as u8)
        }
        Err(Failure::Panicked) => ExitCode::from(exit::ERROR as u8),
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

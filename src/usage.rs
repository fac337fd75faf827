//! The command line's edges: environment variables for every option, and usage errors as operators
//! read them.
//!
//! * **`WALRELAY_*`**: every option with a long name can also be set in the environment, named
//!   `WALRELAY_` plus the long name in upper case with `-` as `_` (`--status-interval` is
//!   `WALRELAY_STATUS_INTERVAL`, `--no-sync` is `WALRELAY_NO_SYNC=true`), so a container or a unit
//!   file needs no wrapper script. The command line wins over the environment. `--password` (`-W`)
//!   has none: it asks for a password at a prompt, and a variable of that name would invite putting
//!   the secret itself there (use `PGPASSWORD` or a password file).
//! * **Usage errors**: clap's own message, whole — the argument it is about, the value, its "did you
//!   mean" tip — on one line per problem, prefixed `walrelay: error:`, plus a tip for the options of
//!   pg_basebackup and pg_receivewal that walrelay has no use for (what to use instead). The exit
//!   status is 2, except under `restore` (see [`crate::parse_cli`]).

use std::ffi::OsString;

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};

/// Options that get no environment variable (see the module documentation).
const NO_ENV: [&str; 2] = ["password", "help"];

/// The variable that sets `--long`.
pub fn env_name(long: &str) -> String {
    format!("WALRELAY_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// Gives every option of `cmd` and its subcommands its `WALRELAY_*` variable.
pub fn with_env_vars(cmd: Command) -> Command {
    // Every level: `subset run`, `backup list` have options of their own.
    cmd.mut_args(env_for).mut_subcommands(with_env_vars)
}

fn env_for(arg: Arg) -> Arg {
    let Some(long) = arg.get_long() else {
        return arg;
    };
    if arg.get_env().is_some()
        || NO_ENV.contains(&long)
        || matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
    {
        return arg;
    }
    let name = env_name(long);
    // Values stay out of --help: a connection string may hold a password.
    let arg = arg.env(name).hide_env_values(true);
    match arg.get_action() {
        // A switch from the environment: true/false, yes/no, on/off, 1/0.
        ArgAction::SetTrue => arg.value_parser(BoolishValueParser::new()),
        _ => arg,
    }
}

/// The subcommand named on the command line, if it is one of `cmd`'s.
pub fn subcommand_of(cmd: &Command, argv: &[OsString]) -> Option<String> {
    let first = argv.get(1)?.to_str()?;
    cmd.get_subcommands()
        .any(|c| c.get_name() == first)
        .then(|| first.to_string())
}

/// A clap error as walrelay prints it: one line per problem, each starting `walrelay: error:`,
/// clap's text whole (minus its usage block), and a tip where a pg_basebackup or pg_receivewal
/// habit has another spelling in walrelay.
pub fn render(e: &clap::Error, sub: Option<&str>) -> String {
    let text = e.render().to_string();
    let mut problem = String::new();
    let mut tips: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if let Some(tip) = line.strip_prefix("tip:") {
            tips.push(tip.trim().to_string());
        } else if problem.is_empty() {
            problem = line.trim_start_matches("error: ").to_string();
        } else {
            // The list under "the following required arguments were not provided:", or clap's
            // "[possible values: …]".
            if !problem.ends_with(':') && !line.starts_with('[') {
                problem.push(',');
            }
            problem.push(' ');
            problem.push_str(line);
        }
    }
    if problem.is_empty() {
        problem = "invalid arguments".to_string();
    }
    let offending = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    }
    .or_else(|| match e.get(ContextKind::InvalidSubcommand) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    });
    if let Some(arg) = offending.clone() {
        let habit = match e.kind() {
            ErrorKind::InvalidSubcommand => subcommand_habit(&arg),
            _ => option_habit(sub, &arg),
        };
        if let Some(h) = habit {
            tips.push(h.to_string());
        } else if looks_like_conninfo(&arg) {
            tips.push(
                "a connection string is given with -d, quoted as one argument: -d 'host=… user=…' or -d 'postgresql://…'"
                    .to_string(),
            );
        }
    }
    let help = match sub {
        Some(s) => format!("walrelay {s} --help"),
        None => "walrelay --help".to_string(),
    };
    // An offending argument holding a password: all of its value goes, spaces included (one
    // argument `password=two words` is one value).
    if let Some(arg) = offending.as_deref() {
        if let Some(at) = arg.to_ascii_lowercase().find("password=") {
            let shown = format!(
                "{}{}",
                &arg[..at + "password=".len()],
                walrelay_conninfo::REDACTED
            );
            problem = problem.replace(arg, &shown);
        }
    }
    let mut out = format!("walrelay: error: {problem}");
    for t in &tips {
        out.push_str(&format!("; tip: {t}"));
    }
    out.push_str(&format!(" (see {help})"));
    // The parser repeats what was typed: a connection string given where none was expected
    // (without -d, or unquoted) must not put its password on the screen or in a log.
    walrelay_conninfo::redact_text(&out)
}

/// A connection string, or a piece of one (`password=…` of an unquoted `-d host=… password=…`).
fn looks_like_conninfo(arg: &str) -> bool {
    arg.starts_with("postgres://")
        || arg.starts_with("postgresql://")
        || arg
            .split_once('=')
            .is_some_and(|(k, _)| walrelay_conninfo::Keyword::from_name(k).is_some())
}

/// A pg tool's name where a walrelay command is meant.
fn subcommand_habit(name: &str) -> Option<&'static str> {
    Some(match name {
        "pg_basebackup" | "basebackup" | "backup" | "clone" | "seed" => {
            "walrelay bootstrap takes pg_basebackup's options"
        }
        "pg_receivewal" | "receivewal" | "stream" | "archive" => {
            "walrelay receive takes pg_receivewal's options"
        }
        "pg_archivecleanup" | "archivecleanup" | "cleanup" => {
            "walrelay prune --before WALFILE is pg_archivecleanup"
        }
        "pg_verifybackup" | "verifybackup" => {
            "walrelay bootstrap verifies the backup against its manifest as it writes it; walrelay verify checks a WAL archive"
        }
        _ => return None,
    })
}

/// What to use instead of a pg_basebackup or pg_receivewal option walrelay does not take. The
/// options that have a meaning in walrelay are accepted under their pg names (`-R`, `-N`, `-n`,
/// `-F p`, `--no-slot`, `--waldir`, `-Z`, `-v`, `-?`); these are the ones that have none.
fn option_habit(sub: Option<&str>, arg: &str) -> Option<&'static str> {
    let name = arg.split(['=', ' ']).next().unwrap_or(arg);
    let tip = match (sub, name) {
        (Some("bootstrap"), "-z" | "--gzip" | "-Z" | "--compress") => {
            "a standby's data directory is written plain; for a compressed stored backup use pg_basebackup -F t -z"
        }
        (Some("bootstrap"), "--xlogdir") => "use --waldir WALDIR",
        (Some("bootstrap"), "-t" | "--target") => {
            "walrelay writes to a local directory only; for server-side backup targets use pg_basebackup --target"
        }
        (Some("bootstrap"), "-i" | "--incremental") => {
            "walrelay takes full copies; for incremental backups use pg_basebackup --incremental (PostgreSQL 17+)"
        }
        (Some("bootstrap"), "-s" | "--status-interval") => {
            "the bootstrap's WAL stream reports its position every 10 s; drop the option"
        }
        (Some("bootstrap"), "--no-estimate-size") => {
            "walrelay always asks the server for the size estimate (it costs little); drop the option"
        }
        (Some("bootstrap"), "--manifest-force-encode") => {
            "walrelay stores backup_manifest as the server sends it; drop the option"
        }
        (Some("bootstrap"), "-x" | "--xlog" | "--xlog-method") => {
            "use -X stream|fetch|none (--wal-method)"
        }
        (Some("receive"), "--compression-method") => "use --compress METHOD[:LEVEL] (-Z)",
        (Some("receive"), "--no-slot") => "receive streams without a slot unless -S is given",
        (_, "--verbose-progress") => "use -P (--progress)",
        _ => return None,
    };
    Some(tip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_long_names() {
        assert_eq!(env_name("status-interval"), "WALRELAY_STATUS_INTERVAL");
        assert_eq!(env_name("pg-wal"), "WALRELAY_PG_WAL");
    }

    #[test]
    fn habits_have_tips() {
        assert!(option_habit(Some("bootstrap"), "--xlogdir=/x").is_some());
        assert!(option_habit(Some("bootstrap"), "-Z").is_some());
        assert!(
            option_habit(Some("receive"), "-Z").is_none(),
            "receive takes -Z"
        );
        assert!(subcommand_habit("pg_basebackup").is_some());
    }
}

//! The configuration a standby's server reads, found from its data directory as the server finds
//! it: the configuration file (`config_file` from the command line it last started with, kept in
//! `postmaster.opts`; else `postgresql.conf` in the data directory; else, on Debian and Ubuntu,
//! the `/etc/postgresql/*/*/postgresql.conf` whose `data_directory` is this one) with its
//! `include`s followed, then `postgresql.auto.conf`, then `recovery.conf` (10 and 11), then the
//! command line's `-c` settings, which override every file.

use std::path::{Path, PathBuf};

use crate::pg_conf::{command_line_settings, settings, Include};

/// The server's own limit on nested includes (guc.h's CONF_FILE_MAX_DEPTH).
const MAX_INCLUDE_DEPTH: usize = 10;

/// One setting as the server reads it, and where it came from.
pub(crate) struct Setting {
    /// The file (relative to the data directory when inside it), or the command line.
    pub origin: String,
    pub name: String,
    pub value: String,
}

/// Every setting the server in `pgdata` reads, in the order it applies them (a later one wins).
pub(crate) fn read(pgdata: &Path) -> Vec<Setting> {
    let command_line = std::fs::read_to_string(pgdata.join("postmaster.opts"))
        .map(|opts| command_line_settings(&opts))
        .unwrap_or_default();
    let config_file = command_line
        .iter()
        .rev()
        .find(|(name, _)| name == "config_file")
        .map(|(_, file)| pgdata.join(file))
        .or_else(|| Some(pgdata.join("postgresql.conf")).filter(|f| f.is_file()))
        .or_else(|| debian_config_file(Path::new(DEBIAN_CONFIG_ROOT), pgdata));
    let mut out = Vec::new();
    if let Some(file) = config_file {
        read_file(pgdata, &file, 0, &mut out);
    }
    for file in ["postgresql.auto.conf", "recovery.conf"] {
        read_file(pgdata, &pgdata.join(file), 0, &mut out);
    }
    out.extend(command_line.into_iter().map(|(name, value)| Setting {
        origin: "the command line it last started with, in postmaster.opts".into(),
        name,
        value,
    }));
    out
}

/// The last value of `name` among `settings`, and where it was set.
pub(crate) fn last<'a>(settings: &'a [Setting], name: &str) -> Option<&'a Setting> {
    settings
        .iter()
        .rev()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

/// The settings of `file` (none if it cannot be read), its includes followed in place.
fn read_file(pgdata: &Path, file: &Path, depth: usize, out: &mut Vec<Setting>) {
    if depth > MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let origin = file
        .strip_prefix(pgdata)
        .unwrap_or(file)
        .display()
        .to_string();
    let here = file.parent().unwrap_or(Path::new("/"));
    for (name, value) in settings(&text) {
        match Include::of(name, &value) {
            Some(Include::File(path)) => read_file(pgdata, &here.join(path), depth + 1, out),
            Some(Include::Dir(dir)) => {
                for f in conf_files(&here.join(dir)) {
                    read_file(pgdata, &f, depth + 1, out);
                }
            }
            None => out.push(Setting {
                origin: origin.clone(),
                name: name.to_string(),
                value,
            }),
        }
    }
}

/// The `*.conf` files of an `include_dir`, in name order, hidden files left out (as the server).
fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".conf") && !n.starts_with('.'))
                && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Where Debian and Ubuntu keep their clusters' configuration (postgresql-common).
const DEBIAN_CONFIG_ROOT: &str = "/etc/postgresql";

/// Debian's layout: the configuration under `root`/MAJOR/CLUSTER, the data directory named by
/// its `data_directory`.
fn debian_config_file(root: &Path, pgdata: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(pgdata).ok()?;
    let majors = std::fs::read_dir(root).ok()?;
    for cluster in majors
        .flatten()
        .filter_map(|m| std::fs::read_dir(m.path()).ok())
        .flatten()
        .flatten()
    {
        let file = cluster.path().join("postgresql.conf");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let data_directory = settings(&text)
            .filter(|(n, _)| n.eq_ignore_ascii_case("data_directory"))
            .last();
        if let Some((_, dir)) = data_directory {
            if std::fs::canonicalize(&dir).ok().as_deref() == Some(want.as_path()) {
                return Some(file);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_s_configuration_is_found_by_its_data_directory_and_includes_followed() {
        let root = tempfile::tempdir().unwrap();
        let (etc, data) = (root.path().join("etc"), root.path().join("data"));
        let (other, main) = (etc.join("15/other"), etc.join("15/main"));
        for d in [&other, &main, &main.join("conf.d"), &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            other.join("postgresql.conf"),
            "data_directory = '/nowhere'\nprimary_conninfo = 'host=other'\n",
        )
        .unwrap();
        std::fs::write(
            main.join("postgresql.conf"),
            format!(
                "data_directory = '{}'\ninclude 'extra.conf'\ninclude_dir 'conf.d'\nport = 5433\n",
                data.display()
            ),
        )
        .unwrap();
        std::fs::write(main.join("extra.conf"), "primary_conninfo = 'host=a'\n").unwrap();
        std::fs::write(main.join("conf.d/20.conf"), "primary_conninfo = 'host=c'\n").unwrap();
        std::fs::write(main.join("conf.d/10.conf"), "primary_conninfo = 'host=b'\n").unwrap();
        std::fs::write(
            main.join("conf.d/.30.conf"),
            "primary_conninfo = 'host=hidden'\n",
        )
        .unwrap();

        let file = debian_config_file(&etc, &data).expect("found by data_directory");
        assert_eq!(file, main.join("postgresql.conf"));
        let mut read = Vec::new();
        read_file(&data, &file, 0, &mut read);
        let names: Vec<String> = read
            .iter()
            .map(|s| format!("{}={}", s.name, s.value))
            .collect();
        assert_eq!(
            names[1..],
            [
                "primary_conninfo=host=a",
                "primary_conninfo=host=b",
                "primary_conninfo=host=c",
                "port=5433"
            ]
        );
        let set = last(&read, "PRIMARY_CONNINFO").unwrap();
        assert_eq!(set.value, "host=c");
        assert_eq!(
            set.origin,
            main.join("conf.d/20.conf").display().to_string()
        );
    }

    #[test]
    fn an_include_loop_ends_at_the_server_s_depth_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.conf"), "port = 1\ninclude 'a.conf'\n").unwrap();
        let mut read = Vec::new();
        read_file(dir.path(), &dir.path().join("a.conf"), 0, &mut read);
        assert_eq!(read.len(), MAX_INCLUDE_DEPTH + 1);
        assert_eq!(read[0].origin, "a.conf");
    }
}

//! The recovery configuration of a data directory restored from an archive: pure rendering.
//!
//! PostgreSQL 12 and later: settings appended to `postgresql.auto.conf` (after the primary's own
//! content) and an empty `recovery.signal` (PITR) or `standby.signal` (standby). PostgreSQL 10 and
//! 11: everything in `recovery.conf`, with `standby_mode`. Values are single-quoted with `'` and
//! `\` doubled (`escape_single_quotes_ascii`), as `pg_basebackup -R` writes them.
//!
//! `restore_command` runs through the shell (`system()`): the walrelay path and the archive are
//! single-quoted for it (`'` written as `'\''`) before the whole is quoted for the file.

use walrelay_basebackup::escape_quotes;

/// First major that reads recovery settings from `postgresql.conf`.
const RECOVERY_GUC_MAJOR: u32 = 12;

/// `recovery_target_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// `recovery_target_time`, as the user wrote it.
    Time(String),
    /// `recovery_target_lsn` (PostgreSQL 10+).
    Lsn(String),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name`: a restore point (`pg_create_restore_point`).
    Name(String),
    /// `recovery_target = 'immediate'`: just consistent.
    Immediate,
    /// No target: everything the archive holds, then promote.
    Latest,
}

/// What the restored server should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Recover to the target, then promote (`recovery_target_action = 'promote'`).
    Pitr(RecoveryTarget),
    /// A standby: replay from the archive, then stream from the primary.
    Standby {
        /// Already rendered for the server's libpq (`conninfo_for_libpq`).
        primary_conninfo: String,
        slot_name: Option<String>,
    },
}

/// One file of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryFile {
    pub name: &'static str,
    pub contents: Vec<u8>,
    /// Append to the existing file (`postgresql.auto.conf`) instead of replacing it.
    pub append: bool,
}

/// A word quoted for `sh`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:+=@%,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `restore_command` for an archive: `WALRELAY restore %f %p -D ARCHIVE`; for a standby that
/// also streams, with `--standby` (an archive it cannot read now does not stop it).
pub fn restore_command(walrelay: &str, archive: &str, standby: bool) -> String {
    format!(
        "{} restore %f %p -D {}{}",
        shell_quote(walrelay),
        shell_quote(archive),
        if standby { " --standby" } else { "" }
    )
}

fn setting(name: &str, value: &str) -> String {
    format!("{name} = '{}'\n", escape_quotes(value))
}

/// The files to write, in order (the signal or recovery.conf first), for `major`.
pub fn render(major: u32, restore_command: &str, mode: &RecoveryMode) -> Vec<RecoveryFile> {
    let mut s = String::from("# written by walrelay bootstrap --from-archive\n");
    let legacy = major < RECOVERY_GUC_MAJOR;
    if legacy {
        let standby = matches!(mode, RecoveryMode::Standby { .. });
        s.push_str(&setting("standby_mode", if standby { "on" } else { "off" }));
    }
    s.push_str(&setting("restore_command", restore_command));
    let signal = match mode {
        RecoveryMode::Pitr(target) => {
            match target {
                RecoveryTarget::Time(t) => s.push_str(&setting("recovery_target_time", t)),
                RecoveryTarget::Lsn(l) => s.push_str(&setting("recovery_target_lsn", l)),
                RecoveryTarget::Xid(x) => s.push_str(&setting("recovery_target_xid", x)),
                RecoveryTarget::Name(n) => s.push_str(&setting("recovery_target_name", n)),
                RecoveryTarget::Immediate => s.push_str(&setting("recovery_target", "immediate")),
                // Recovery runs to the end of the archive and promotes there, on every major.
                RecoveryTarget::Latest => {}
            }
            s.push_str(&setting("recovery_target_action", "promote"));
            // Follow the archive's timeline switches (a failover since the backup) to the
            // target: the default from 12, not on 10 and 11, where recovery stayed on the
            // backup's timeline and promoted at its end, short of the target, without an error.
            s.push_str(&setting("recovery_target_timeline", "latest"));
            "recovery.signal"
        }
        RecoveryMode::Standby {
            primary_conninfo,
            slot_name,
        } => {
            s.push_str(&setting("primary_conninfo", primary_conninfo));
            if let Some(slot) = slot_name {
                s.push_str(&setting("primary_slot_name", slot));
            }
            s.push_str(&setting("recovery_target_timeline", "latest"));
            "standby.signal"
        }
    };
    if legacy {
        return vec![RecoveryFile {
            name: "recovery.conf",
            contents: s.into_bytes(),
            append: false,
        }];
    }
    vec![
        RecoveryFile {
            name: signal,
            contents: Vec::new(),
            append: false,
        },
        RecoveryFile {
            name: "postgresql.auto.conf",
            contents: s.into_bytes(),
            append: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(f: &RecoveryFile) -> String {
        String::from_utf8(f.contents.clone()).unwrap()
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/walrelay"), "/usr/bin/walrelay");
        assert_eq!(shell_quote("s3://b/p"), "s3://b/p");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            restore_command("/bin/walrelay", "/srv/my archive", false),
            "/bin/walrelay restore %f %p -D '/srv/my archive'"
        );
        assert_eq!(
            restore_command("/bin/walrelay", "s3://b/p", true),
            "/bin/walrelay restore %f %p -D s3://b/p --standby"
        );
    }

    #[test]
    fn pitr_on_12_and_later() {
        let cmd = restore_command("/bin/walrelay", "/srv/it's", false);
        let files = render(
            15,
            &cmd,
            &RecoveryMode::Pitr(RecoveryTarget::Time("2024-06-01 12:00:00+00".into())),
        );
        assert_eq!(files.len(), 2);
        assert_eq!(
            (files[0].name, files[0].contents.len()),
            ("recovery.signal", 0)
        );
        assert_eq!(files[1].name, "postgresql.auto.conf");
        assert!(files[1].append);
        let t = text(&files[1]);
        assert!(
            t.contains(
                "restore_command = '/bin/walrelay restore %f %p -D ''/srv/it''\\\\''''s'''\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("recovery_target_time = '2024-06-01 12:00:00+00'\n"),
            "{t}"
        );
        assert!(t.contains("recovery_target_action = 'promote'\n"), "{t}");
        assert!(!t.contains("standby_mode"), "{t}");
        for (target, line) in [
            (
                RecoveryTarget::Lsn("0/3000000".into()),
                "recovery_target_lsn = '0/3000000'",
            ),
            (
                RecoveryTarget::Xid("1234".into()),
                "recovery_target_xid = '1234'",
            ),
            (RecoveryTarget::Immediate, "recovery_target = 'immediate'"),
            (
                RecoveryTarget::Name("before it's gone".into()),
                "recovery_target_name = 'before it''s gone'",
            ),
        ] {
            let f = render(13, "x", &RecoveryMode::Pitr(target));
            assert!(text(&f[1]).contains(line));
        }
    }

    #[test]
    fn standby_and_old_majors() {
        let mode = RecoveryMode::Standby {
            primary_conninfo: "host=p user=r".into(),
            slot_name: Some("s1".into()),
        };
        let f = render(16, "cmd", &mode);
        assert_eq!(f[0].name, "standby.signal");
        let t = text(&f[1]);
        assert!(t.contains("primary_conninfo = 'host=p user=r'\n"), "{t}");
        assert!(t.contains("primary_slot_name = 's1'\n"), "{t}");
        assert!(t.contains("restore_command = 'cmd'\n"), "{t}");
        let f = render(11, "cmd", &mode);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, "recovery.conf");
        assert!(!f[0].append);
        assert!(text(&f[0]).contains("standby_mode = 'on'\n"));
        for major in [10, 16] {
            let f = render(major, "cmd", &RecoveryMode::Pitr(RecoveryTarget::Latest));
            let t = text(f.last().unwrap());
            assert!(!t.contains("recovery_target ="), "{t}");
            assert!(!t.contains("recovery_target_time ="), "{t}");
            assert!(t.contains("restore_command = 'cmd'"), "{t}");
        }
        let f = render(10, "cmd", &RecoveryMode::Pitr(RecoveryTarget::Immediate));
        let t = text(&f[0]);
        assert!(
            t.contains("standby_mode = 'off'\n") && t.contains("recovery_target = 'immediate'"),
            "{t}"
        );
        // 10 and 11 stay on the backup's timeline unless told: a PITR past a failover stopped
        // at the old timeline's end, short of the target.
        for major in [10, 11, 12, 18] {
            let f = render(
                major,
                "cmd",
                &RecoveryMode::Pitr(RecoveryTarget::Xid("9".into())),
            );
            let t = text(f.last().unwrap());
            assert!(
                t.contains("recovery_target_timeline = 'latest'\n"),
                "{major}: {t}"
            );
        }
    }
}

//! Which backup to restore, and which to keep: pure decisions over descriptors.

use walrelay_protocol::Lsn;

use crate::descriptor::BackupDescriptor;

/// What `--backup` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupChoice {
    Latest,
    Label(String),
}

impl std::str::FromStr for BackupChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "latest" {
            return Ok(BackupChoice::Latest);
        }
        crate::descriptor::validate_label(s).map_err(|e| e.to_string())?;
        Ok(BackupChoice::Label(s.to_string()))
    }
}

/// A PITR target as far as choosing a backup goes.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetBound {
    /// The newest backup (immediate, a standby).
    None,
    /// A transaction ID (`recovery_target_xid`): the backup must have begun before it was
    /// assigned (its recorded next transaction ID at or below it); a backup that recorded none
    /// is taken only when named.
    Xid(u64),
    /// Seconds since the epoch: the backup must end before it.
    Time(f64),
    /// The backup must end at or before it.
    Lsn(Lsn),
    /// A restore point (`recovery_target_name`): where it is is not known before recovery finds
    /// it, so `latest` means the oldest backup, which every restore point made after it follows.
    Oldest,
}

/// The complete backups ordered oldest first (by end position, then end time, then label).
pub fn ordered(mut backups: Vec<BackupDescriptor>) -> Vec<BackupDescriptor> {
    backups.sort_by(|a, b| {
        a.end_lsn
            .cmp(&b.end_lsn)
            .then(
                a.end_seconds()
                    .partial_cmp(&b.end_seconds())
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(a.label.cmp(&b.label))
    });
    backups
}

/// Picks the backup to restore from the complete ones; `Err` says why none fits.
pub fn choose(
    backups: &[BackupDescriptor],
    choice: &BackupChoice,
    bound: &TargetBound,
) -> Result<BackupDescriptor, String> {
    let all = ordered(backups.to_vec());
    let fits = |b: &BackupDescriptor| match bound {
        TargetBound::None | TargetBound::Oldest => true,
        TargetBound::Time(t) => b.end_seconds().is_some_and(|e| e < *t),
        TargetBound::Lsn(l) => b.end_lsn <= *l,
        TargetBound::Xid(x) => b
            .next_xid
            .is_some_and(|n| crate::pg_control::assigned_at_or_after(*x, n)),
    };
    match choice {
        BackupChoice::Label(label) => {
            let b = all.iter().find(|b| &b.label == label).ok_or_else(|| {
                format!("the archive has no complete backup labelled {label:?}: see walrelay backup list")
            })?;
            if let (TargetBound::Xid(x), None) = (bound, b.next_xid) {
                tracing::warn!(label = %b.label, "backup {label:?} recorded no transaction ID: recovery to transaction {x} from it works only if it began before that transaction");
                return Ok(b.clone());
            }
            if let (TargetBound::Xid(x), false) = (bound, fits(b)) {
                return Err(format!(
                    "backup {label:?} began after transaction {x} (its next transaction ID was {}): recovery from it would replay past the target; choose an older backup",
                    b.next_xid.unwrap_or_default()
                ));
            }
            if !fits(b) {
                return Err(format!(
                    "backup {label:?} ends after the recovery target (at {} / {}): choose an older backup or a later target",
                    b.end_time, b.end_lsn
                ));
            }
            Ok(b.clone())
        }
        BackupChoice::Latest => {
            if all.is_empty() {
                return Err(
                    "the archive holds no complete backup: take one with walrelay backup".into(),
                );
            }
            if *bound == TargetBound::Oldest {
                return Ok(all[0].clone());
            }
            all.iter().rev().find(|b| fits(b)).cloned().ok_or_else(|| match bound {
                TargetBound::Xid(x) => format!(
                    "no backup in the archive is known to have begun before transaction {x} (backups stored by an older walrelay record no transaction ID): name one taken before it with --backup LABEL, or choose a later target"
                ),
                _ => "every backup in the archive ends after the recovery target: choose a later target".into(),
            })
        }
    }
}

/// Retention: which backups `prune` keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N.
    pub keep_backups: Option<usize>,
    /// Keep every backup that ended within this many seconds before `now`.
    pub keep_seconds: Option<i64>,
}

/// Splits the complete backups into (kept, removed), both oldest first. A backup is kept when
/// one of the rules keeps it; the newest backup is always kept.
pub fn retain(
    backups: &[BackupDescriptor],
    rule: Retention,
    now_unix: i64,
) -> (Vec<BackupDescriptor>, Vec<BackupDescriptor>) {
    let all = ordered(backups.to_vec());
    let n = all.len();
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for (i, b) in all.into_iter().enumerate() {
        let from_newest = n - 1 - i;
        let by_count = rule.keep_backups.is_some_and(|k| from_newest < k);
        let by_age = rule.keep_seconds.is_some_and(|s| {
            b.end_seconds()
                .is_some_and(|e| now_unix as f64 - e <= s as f64)
        });
        if by_count || by_age || from_newest == 0 {
            kept.push(b);
        } else {
            removed.push(b);
        }
    }
    (kept, removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::descriptor::{rfc3339, FORMAT_VERSION};

    fn b(label: &str, end_lsn: u64, end_unix: i64) -> BackupDescriptor {
        BackupDescriptor {
            format_version: FORMAT_VERSION,
            label: label.into(),
            system_identifier: 1,
            server_version: 150000,
            wal_segment_size: 1 << 20,
            start_lsn: Lsn(end_lsn - 10),
            start_timeline: 1,
            end_lsn: Lsn(end_lsn),
            end_timeline: 1,
            start_time: rfc3339(end_unix - 5),
            end_time: rfc3339(end_unix),
            compression: "zstd".into(),
            manifest: true,
            objects: Vec::new(),
            next_xid: None,
        }
    }

    #[test]
    fn choosing() {
        let all = vec![b("c", 300, 3000), b("a", 100, 1000), b("b", 200, 2000)];
        let pick = |c: BackupChoice, t: TargetBound| choose(&all, &c, &t).map(|d| d.label);
        assert_eq!(pick(BackupChoice::Latest, TargetBound::None).unwrap(), "c");
        assert_eq!(
            pick(BackupChoice::Latest, TargetBound::Time(2500.0)).unwrap(),
            "b"
        );
        // ending exactly at the target is not "before" it
        assert_eq!(
            pick(BackupChoice::Latest, TargetBound::Time(2000.0)).unwrap(),
            "a"
        );
        assert!(pick(BackupChoice::Latest, TargetBound::Time(999.0)).is_err());
        assert_eq!(
            pick(BackupChoice::Latest, TargetBound::Lsn(Lsn(200))).unwrap(),
            "b"
        );
        assert_eq!(
            pick(BackupChoice::Label("a".into()), TargetBound::None).unwrap(),
            "a"
        );
        let e = pick(BackupChoice::Label("c".into()), TargetBound::Time(2500.0)).unwrap_err();
        assert!(e.contains("ends after the recovery target"), "{e}");
        assert!(pick(BackupChoice::Label("zz".into()), TargetBound::None).is_err());
        assert!(choose(&[], &BackupChoice::Latest, &TargetBound::None).is_err());
        assert_eq!(
            pick(BackupChoice::Latest, TargetBound::Oldest).unwrap(),
            "a"
        );
        assert_eq!(
            pick(BackupChoice::Label("b".into()), TargetBound::Oldest).unwrap(),
            "b"
        );
        assert!(choose(&[], &BackupChoice::Latest, &TargetBound::Oldest).is_err());

        // A transaction ID: the newest backup that began before it was assigned.
        let with_xid = |mut d: BackupDescriptor, next: Option<u64>| {
            d.next_xid = next;
            d
        };
        let xids = vec![
            with_xid(b("a", 100, 1000), Some(500)),
            with_xid(b("b", 200, 2000), Some(800)),
            with_xid(b("c", 300, 3000), None),
        ];
        let by_xid = |c: BackupChoice, x: u64| choose(&xids, &c, &TargetBound::Xid(x));
        assert_eq!(by_xid(BackupChoice::Latest, 900).unwrap().label, "b");
        assert_eq!(by_xid(BackupChoice::Latest, 800).unwrap().label, "b");
        assert_eq!(by_xid(BackupChoice::Latest, 799).unwrap().label, "a");
        let e = by_xid(BackupChoice::Latest, 400).unwrap_err();
        assert!(
            e.contains("no backup in the archive is known to have begun before transaction 400"),
            "{e}"
        );
        let e = by_xid(BackupChoice::Label("b".into()), 700).unwrap_err();
        assert!(e.contains("began after transaction 700"), "{e}");
        // Named, one that recorded none is taken (with a warning).
        assert_eq!(
            by_xid(BackupChoice::Label("c".into()), 400).unwrap().label,
            "c"
        );
        assert_eq!("latest".parse::<BackupChoice>(), Ok(BackupChoice::Latest));
        assert!("a/b".parse::<BackupChoice>().is_err());
    }

    #[test]
    fn retention() {
        let all = vec![
            b("d", 400, 4000),
            b("a", 100, 1000),
            b("c", 300, 3000),
            b("b", 200, 2000),
        ];
        let labels = |v: &[BackupDescriptor]| v.iter().map(|d| d.label.clone()).collect::<Vec<_>>();
        let (k, r) = retain(
            &all,
            Retention {
                keep_backups: Some(2),
                keep_seconds: None,
            },
            5000,
        );
        assert_eq!(
            (labels(&k), labels(&r)),
            (vec!["c".into(), "d".into()], vec!["a".into(), "b".into()])
        );
        let (k, _) = retain(
            &all,
            Retention {
                keep_backups: Some(1),
                keep_seconds: Some(2500),
            },
            5000,
        );
        assert_eq!(labels(&k), vec!["c", "d"]);
        // nothing young enough: the newest stays anyway
        let (k, r) = retain(
            &all,
            Retention {
                keep_backups: None,
                keep_seconds: Some(10),
            },
            5000,
        );
        assert_eq!((labels(&k), r.len()), (vec!["d".to_string()], 3));
        let (k, r) = retain(
            &all,
            Retention {
                keep_backups: Some(0),
                keep_seconds: None,
            },
            5000,
        );
        assert_eq!((k.len(), r.len()), (1, 3));
        assert_eq!(retain(&[], Retention::default(), 0).0.len(), 0);
    }
}

//! Progress tracking: how far the target has applied the source's stream, and what may be
//! confirmed to the source. Pure: events in, positions out.
//!
//! # The invariant
//!
//! The slot's `confirmed_flush_lsn` on the source never passes what is durable on the target,
//! and the target's progress row (`walrelay.subset_progress.applied_lsn`) always says exactly
//! which source position its data reflects. The row is updated **in the same target transaction
//! as the changes it covers**, so after any crash — of walrelay, the source or the target — the
//! stream restarts at the row's position: nothing applied twice, nothing skipped.
//!
//! Four positions, each at or behind the one before:
//!
//! * `caught`: every transaction committing before it is applied or concerns none of the
//!   subset's tables. It moves with each applied transaction (to its commit's end), with each
//!   transaction that had nothing for the target, and with the source's keepalives while no
//!   transaction is open and none waits uncommitted in a target transaction (a keepalive's
//!   position is the end of what the walsender has decoded, never past a transaction it is still
//!   sending).
//! * `committed`: the position written by the last target transaction that committed. Apply
//!   commits carry their transaction's end; between them, `caught` is written on its own
//!   ([`Progress::to_persist`]) so that idle tables still let the slot advance.
//! * `durable`: `committed` once the target's WAL is flushed past that commit. The apply session
//!   commits asynchronously (as PostgreSQL's own apply worker does), so it asks the target for
//!   its flush and insert positions ([`Progress::target_positions`]): a commit acknowledged
//!   before the insert position was read is durable once the flush position reaches it.
//! * what is reported as `flush` in the status updates: `durable`, which is what advances the
//!   slot.

use walrelay_protocol::Lsn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    caught: Lsn,
    committed: Lsn,
    durable: Lsn,
    /// A committed position and the target's insert position read after it: durable once the
    /// target's flush position reaches the latter.
    waiting: Option<(Lsn, Lsn)>,
    in_transaction: bool,
    /// Complete source transactions wait, uncommitted, in an open target transaction (group
    /// commit): a keepalive must not move `caught` past them, or a rollback would skip them.
    uncommitted: bool,
}

impl Progress {
    /// Starting from the position in the target's progress row. It is committed, but whether it
    /// is flushed is not known until the first look at the target's positions.
    pub fn new(start: Lsn) -> Self {
        Progress {
            caught: start,
            committed: start,
            durable: Lsn::INVALID,
            waiting: None,
            in_transaction: false,
            uncommitted: false,
        }
    }

    pub fn caught(&self) -> Lsn {
        self.caught
    }

    pub fn committed(&self) -> Lsn {
        self.committed
    }

    /// What may be confirmed to the source (`INVALID` until known: the server ignores it).
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// A source transaction begins.
    pub fn begin(&mut self) {
        self.in_transaction = true;
    }

    /// The source transaction in progress was abandoned (its target transaction rolled back).
    pub fn rolled_back(&mut self) {
        self.in_transaction = false;
        self.uncommitted = false;
    }

    /// The target committed a transaction whose progress row says `end_lsn`.
    pub fn applied(&mut self, end_lsn: Lsn) {
        self.in_transaction = false;
        self.uncommitted = false;
        self.caught = self.caught.max(end_lsn);
        self.committed = self.committed.max(end_lsn);
    }

    /// A source transaction ended and its changes wait, uncommitted, in a target transaction
    /// with more (group commit): `caught` moves when the group commits ([`Progress::applied`]).
    pub fn deferred(&mut self) {
        self.in_transaction = false;
        self.uncommitted = true;
    }

    /// A source transaction ended with nothing for the target.
    pub fn skipped(&mut self, end_lsn: Lsn) {
        self.in_transaction = false;
        self.caught = self.caught.max(end_lsn);
    }

    /// The source's keepalive: everything before `wal_end` has been sent.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if !self.in_transaction && !self.uncommitted {
            self.caught = self.caught.max(wal_end);
        }
    }

    /// The position to write in the progress row on its own, if the row is behind and no
    /// transaction is open.
    pub fn to_persist(&self) -> Option<Lsn> {
        (!self.in_transaction && !self.uncommitted && self.caught > self.committed)
            .then_some(self.caught)
    }

    /// The progress row now says `lsn` (committed).
    pub fn persisted(&mut self, lsn: Lsn) {
        self.committed = self.committed.max(lsn);
    }

    /// Whether looking at the target's WAL positions may advance `durable`.
    pub fn needs_flush_check(&self) -> bool {
        self.committed > self.durable || self.waiting.is_some()
    }

    /// The target's `pg_current_wal_flush_lsn()` and, read in the same statement,
    /// `pg_current_wal_insert_lsn()`.
    pub fn target_positions(&mut self, flush: Lsn, insert: Lsn) {
        if let Some((remote, local)) = self.waiting {
            if flush >= local {
                self.durable = self.durable.max(remote);
                self.waiting = None;
            }
        }
        if self.waiting.is_none() && self.committed > self.durable {
            if flush >= insert {
                self.durable = self.committed;
            } else {
                self.waiting = Some((self.committed, insert));
            }
        }
    }

    /// A synchronous commit on the target returned: everything committed is durable.
    pub fn flushed(&mut self) {
        self.durable = self.durable.max(self.committed);
        self.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_transactions_become_durable_when_the_target_flushes() {
        let mut p = Progress::new(Lsn(100));
        assert_eq!(p.durable(), Lsn::INVALID, "unknown until checked");
        p.target_positions(Lsn(5000), Lsn(5000));
        assert_eq!(p.durable(), Lsn(100));
        p.begin();
        p.applied(Lsn(200));
        assert_eq!(
            (p.caught(), p.committed(), p.durable()),
            (Lsn(200), Lsn(200), Lsn(100))
        );
        // The target has not flushed our commit yet: wait for its insert position.
        p.target_positions(Lsn(5000), Lsn(6000));
        assert_eq!(p.durable(), Lsn(100));
        p.begin();
        p.applied(Lsn(300));
        // Flushed past the first look's insert position: 200 is durable, not yet 300.
        p.target_positions(Lsn(6000), Lsn(7000));
        assert_eq!(p.durable(), Lsn(200));
        p.target_positions(Lsn(7000), Lsn(7000));
        assert_eq!(p.durable(), Lsn(300));
        assert!(!p.needs_flush_check());
    }

    #[test]
    fn a_rolled_back_group_is_never_skipped() {
        let mut p = Progress::new(Lsn(100));
        // Two source transactions wait uncommitted in one target transaction…
        p.begin();
        p.deferred();
        p.begin();
        p.deferred();
        // …a keepalive past them must not count them as done…
        p.keepalive(Lsn(900));
        assert_eq!(p.caught(), Lsn(100));
        assert_eq!(p.to_persist(), None);
        // …so that when a stop mid-transaction rolls the group back, nothing is skipped.
        p.begin();
        p.rolled_back();
        assert_eq!(p.caught().max(p.committed()), Lsn(100));
        // Committed, the group counts, and keepalives count again.
        p.begin();
        p.deferred();
        p.applied(Lsn(400));
        p.keepalive(Lsn(900));
        assert_eq!(p.caught(), Lsn(900));
    }

    #[test]
    fn keepalives_count_only_between_transactions() {
        let mut p = Progress::new(Lsn(100));
        p.begin();
        p.keepalive(Lsn(500));
        assert_eq!(p.caught(), Lsn(100));
        assert_eq!(p.to_persist(), None, "a transaction is open");
        p.skipped(Lsn(150));
        p.keepalive(Lsn(500));
        assert_eq!(p.caught(), Lsn(500));
        assert_eq!(p.to_persist(), Some(Lsn(500)));
        p.persisted(Lsn(500));
        assert_eq!(p.to_persist(), None);
        assert!(p.needs_flush_check());
        p.flushed();
        assert_eq!(p.durable(), Lsn(500));
        // Never backwards.
        p.keepalive(Lsn(400));
        p.applied(Lsn(450));
        assert_eq!((p.caught(), p.committed()), (Lsn(500), Lsn(500)));
    }
}

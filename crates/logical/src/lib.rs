//! `walrelay subset`: a chosen set of tables copied from one PostgreSQL database into another and
//! kept current over logical replication — walrelay is the `pgoutput` client and the applier.
//!
//! ```text
//!  source (wal_level = logical)                                    target (any role owning the tables)
//!  ┌───────────────────────────┐   COPY … TO STDOUT (snapshot S)   ┌──────────────────────────────────┐
//!  │ publication walrelay_NAME │ ───────────────────────────────►  │ tables (created from the source's │
//!  │ slot walrelay_NAME        │   pgoutput stream from the slot   │ catalogs, for the target's major) │
//!  │  (pgoutput, proto 1 / 2)  │ ───────────────────────────────►  │ walrelay.subset_progress          │
//!  └───────────────────────────┘ ◄── flush = what the target made │ walrelay.subset_tables, …         │
//!                                     durable                      └──────────────────────────────────┘
//! ```
//!
//! * `prepare`: preflight (every problem, one line each with its fix, nothing created on failure)
//!   and idempotent setup — target tables from the source's catalogs (`catalog`, `ddl`), state
//!   tables, the publication.
//! * `sync`: the initial copy under a slot's exported snapshot, several tables in parallel, each
//!   committed with its sync point; tables added later get their own snapshot and point.
//! * `stream`: one session — network task and apply task (`apply_session`) joined by a bounded
//!   channel; `apply` is the pure core that turns pgoutput messages into statements (their SQL in
//!   `statements`: REPLICA IDENTITY FULL matching, `--on-conflict`), `progress` the pure core that
//!   decides what may be confirmed to the source; `follow` follows (or refuses, naming the
//!   choices) schema changes of the source; `spool` keeps transactions the source streams before
//!   their commit (protocol 2, 14+) on disk; `sequences` copies sequence positions.
//! * `run`: sessions after sessions with backoff, like `receive`.
//! * [`status`], [`verify`] (row counts and an order-independent content hash on both sides),
//!   [`drop_subset`].
//!
//! # Progress tracking (the invariant)
//!
//! The target's progress row is updated in the same target transaction as the changes it covers;
//! the source's slot is confirmed only up to what the target has made durable; a session starts
//! streaming at the progress row's position. So after a crash anywhere nothing is applied twice and
//! nothing is skipped. Details in `progress`.
//!
//! References: `src/backend/replication/logical/{worker.c,tablesync.c,proto.c}`,
//! `src/backend/replication/pgoutput/pgoutput.c`,
//! <https://www.postgresql.org/docs/current/protocol-logical-replication.html>.

mod apply;
mod apply_session;
mod catalog;
mod config;
mod ddl;
mod drop;
mod error;
mod follow;
mod prepare;
mod progress;
mod run;
mod schema;
mod sequences;
mod source;
mod spool;
mod state;
mod statements;
mod stats;
mod status;
mod stream;
mod sync;
mod target_session;
mod verify;

pub use config::{
    OnConflict, RunConfig, DEFAULT_COPY_JOBS, DEFAULT_SEQUENCE_INTERVAL, DEFAULT_STATUS_INTERVAL,
};
pub use drop::{drop_subset, DropReport};
pub use error::{ConflictReport, Problem, Side, SubsetError};
pub use prepare::{CheckReport, TableAction, TablePlan};
pub use run::{check, run, RunSummary, StopReason};
pub use schema::{SubsetName, TableName};
pub use source::ServerFacts;
pub use state::TableState;
pub use stats::{Phase, SubsetStats, SubsetStatsSnapshot};
pub use status::{status, SlotStatus, SubsetStatus};
pub use verify::{verify, TableVerdict, VerifyReport};

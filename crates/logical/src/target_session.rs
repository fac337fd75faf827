//! What walrelay's writing sessions on the target are: sessions of a replica, as PostgreSQL's own
//! apply and table-sync workers are (`session_replication_role = replica`), so that the target's
//! ordinary triggers and foreign-key checks do not fire for rows the source already checked —
//! a copy may fill a child table before its parent, and a cascading delete on the source arrives
//! as the deletes it caused. Only a superuser (or, from PostgreSQL 15, a role granted
//! `SET ON PARAMETER session_replication_role`) may set it; without it the session stays an
//! ordinary one and preflight says what that means.

use walrelay_client::{ClientError, Connection};

/// Makes `conn` a replica session if the role may; whether it did.
pub(crate) async fn replica_role(conn: &mut Connection) -> Result<bool, ClientError> {
    match conn
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.sqlstate() == Some(walrelay_client::sqlstate::INSUFFICIENT_PRIVILEGE) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The preflight note for a role that may not (`user` quoted as an identifier).
pub(crate) fn ordinary_role_note(user: &str) -> String {
    format!(
        "role {user} may not set session_replication_role on the target: the target's triggers and foreign-key checks fire for every row walrelay writes (a native subscription's apply does not fire them), so a foreign key between subset tables may stop the copy; connect as a superuser, or GRANT SET ON PARAMETER session_replication_role TO {user} (PostgreSQL 15+)"
    )
}

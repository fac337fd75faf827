//! `subset drop`: the slot and the publication on the source, walrelay's state on the target and,
//! if asked, the subset's tables there. Every step is skipped when already done, so a drop that
//! was interrupted can simply be run again.

use serde::Serialize;
use tracing::info;
use walrelay_client::{ConnectParams, Connection, ServerCondition};

use crate::catalog;
use crate::config::{source_sql, target_sql};
use crate::error::{Problem, Side, SubsetError};
use crate::schema::{quote_literal, SubsetName, TableName};
use crate::sequences;
use crate::source;
use crate::state;

#[derive(Clone, Debug, Default, Serialize)]
pub struct DropReport {
    /// Sequences moved forward on the target (a last copy, for the cut-over).
    pub sequences_advanced: usize,
    pub slot_dropped: bool,
    pub publication_dropped: bool,
    pub state_removed: bool,
    pub tables_dropped: Vec<TableName>,
}

impl DropReport {
    pub fn nothing_dropped(&self) -> bool {
        !self.slot_dropped
            && !self.publication_dropped
            && !self.state_removed
            && self.tables_dropped.is_empty()
    }
}

pub async fn drop_subset(
    source_params: &ConnectParams,
    target: &ConnectParams,
    name: &SubsetName,
    drop_tables: bool,
) -> Result<DropReport, SubsetError> {
    let mut report = DropReport::default();
    let mut src = catalog::connect(&source_sql(source_params, name), Side::Source).await?;
    let mut tgt = Connection::connect(&target_sql(target, name))
        .await
        .map_err(SubsetError::connect(Side::Target))?;
    let on_tgt = |what: &str| SubsetError::sql(Side::Target, what.to_string());
    let st = state::load(&mut tgt, name)
        .await
        .map_err(on_tgt("read walrelay's state"))?;
    if let (Some(st), false) = (&st, drop_tables) {
        // The cut-over's last step: the target's sequences beyond every value the source handed
        // out (its writers have stopped by now).
        let tables: Vec<TableName> = st.tables.iter().map(|t| t.table.clone()).collect();
        let pairs = sequences::pairs(&mut src, &mut tgt, &tables, &st.sequences).await?;
        report.sequences_advanced = sequences::advance(&mut src, &mut tgt, name, &pairs).await?;
    }
    let slot = name.slot();
    match source::drop_slot(&mut src, &slot).await {
        Ok(dropped) => report.slot_dropped = dropped,
        Err(e) if e.condition() == Some(ServerCondition::SlotInUse) => {
            return Err(SubsetError::Preflight(vec![Problem::new(
                Side::Source,
                format!("replication slot {slot} is in use"),
                "stop `walrelay subset run` for this subset first, then drop again",
            )]))
        }
        Err(e) => {
            return Err(SubsetError::sql(Side::Source, "drop the replication slot")(
                e,
            ))
        }
    }
    let publication = name.publication();
    report.publication_dropped = source::publication(&mut src, &publication)
        .await
        .map_err(SubsetError::sql(Side::Source, "read the publication"))?
        .is_some();
    source::drop_publication(&mut src, &publication)
        .await
        .map_err(SubsetError::sql(Side::Source, "drop the publication"))?;
    src.close().await;

    if let Some(st) = st {
        let subset = quote_literal(name.as_str());
        let mut sql = String::from("BEGIN;\n");
        if drop_tables {
            for t in &st.tables {
                sql.push_str(&format!("DROP TABLE IF EXISTS {};\n", t.table.quoted()));
                report.tables_dropped.push(t.table.clone());
            }
        }
        if state::layout(&mut tgt)
            .await
            .map_err(on_tgt("read walrelay's state"))?
            >= 2
        {
            sql.push_str(&format!(
                "DELETE FROM walrelay.subset_columns WHERE subset = {subset};
                 DELETE FROM walrelay.subset_sequences WHERE subset = {subset};
                 DELETE FROM walrelay.subset_conflicts WHERE subset = {subset};\n"
            ));
        }
        sql.push_str(&format!(
            "DELETE FROM walrelay.subset_tables WHERE subset = {subset};
             DELETE FROM walrelay.subset_progress WHERE subset = {subset};
             COMMIT"
        ));
        tgt.batch_execute(&sql)
            .await
            .map_err(on_tgt("remove the subset's state"))?;
        report.state_removed = true;
    }
    tgt.close().await;
    info!(
        subset = %name,
        slot_dropped = report.slot_dropped,
        publication_dropped = report.publication_dropped,
        state_removed = report.state_removed,
        tables_dropped = report.tables_dropped.len(),
        sequences_advanced = report.sequences_advanced,
        "dropped"
    );
    Ok(report)
}

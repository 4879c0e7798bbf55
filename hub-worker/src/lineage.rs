//! A message's whole chain, from any layer's id: the raw bytes, the records they became, the
//! core messages, and every dispatch with its status.

use sea_orm::ConnectionTrait;
use serde::Serialize;
use uuid::Uuid;

use layer1_ingest::lineage::entries_by_origin;
use layer1_ingest::table::{by_origin, origin_of};
use layer1_ingest::{LayerTable, LineageEntry};

use crate::error::{Error, Result};

/// Every row of one flow, in layer order, each layer oldest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Lineage {
    /// The id that was asked for.
    pub focus: Uuid,
    /// The flow's first row.
    pub origin_id: Uuid,
    /// The rows.
    pub entries: Vec<LineageEntry>,
}

impl Lineage {
    /// The rows on the path through `id`: its ancestors, itself and its descendants. For a
    /// layer 4 id that is exactly one row per layer.
    pub fn chain(&self, id: Uuid) -> Vec<&LineageEntry> {
        let by_id = |x: Uuid| self.entries.iter().find(|e| e.id == x);
        let mut up = Vec::new();
        let mut cur = by_id(id);
        while let Some(e) = cur {
            up.push(e);
            cur = e.parent_id.and_then(by_id);
        }
        up.reverse();
        let mut frontier = vec![id];
        while !frontier.is_empty() {
            let children: Vec<&LineageEntry> =
                self.entries.iter().filter(|e| e.parent_id.is_some_and(|p| frontier.contains(&p))).collect();
            frontier = children.iter().map(|e| e.id).collect();
            up.extend(children);
        }
        up
    }
}

async fn find_origin<E: LayerTable, C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Option<Uuid>> {
    Ok(origin_of::<E, C>(conn, id).await?)
}

/// The flow `id` belongs to: its origin, from the first layer that holds `id`.
async fn origin<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Uuid> {
    use layer1_ingest::entity as l1;
    use layer2_normalize::entity as l2;
    use layer3_translate::entity as l3;
    use layer4_dispatch::entity as l4;
    Ok(match find_origin::<l1::Entity, C>(conn, id).await? {
        Some(o) => o,
        None => match find_origin::<l2::Entity, C>(conn, id).await? {
            Some(o) => o,
            None => match find_origin::<l3::Entity, C>(conn, id).await? {
                Some(o) => o,
                None => find_origin::<l4::Entity, C>(conn, id).await?.ok_or(Error::NotFound(id))?,
            },
        },
    })
}

/// The flow `id` belongs to, in one statement: a primary-key probe per layer (`UNION ALL`),
/// instead of up to four round trips. Ids are UUIDv7s, unique across the layers.
async fn origin_in_one<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Uuid> {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement, UnionType};
    let probe = |table: &str| -> SelectStatement {
        Query::select()
            .column(Alias::new("origin_id"))
            .from(Alias::new(table))
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned()
    };
    let mut q = probe("layer1_raw");
    for table in ["layer2_normalized", "layer3_translated", "layer4_dispatch"] {
        q.union(UnionType::All, probe(table));
    }
    q.limit(1);
    let row = conn.query_one(&q).await?.ok_or(Error::NotFound(id))?;
    Ok(row.try_get::<Uuid>("", "origin_id")?)
}

/// The lineage of the message `id` names (any layer's id): the origin in one statement of
/// primary-key probes, then the flow's rows of the four layers by the `(origin_id, parent_id)`
/// index, the four queries at once (each on its own pooled connection on PostgreSQL), reading
/// the entries' columns only, not the bodies and records ([`layer1_ingest::LineageTable`]).
/// Its time does not depend on the size of the tables.
pub async fn lineage<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Lineage> {
    use layer1_ingest::entity as l1;
    use layer2_normalize::entity as l2;
    use layer3_translate::entity as l3;
    use layer4_dispatch::entity as l4;
    let origin = origin_in_one(conn, id).await?;
    let (e1, e2, e3, e4) = tokio::try_join!(
        entries_by_origin::<l1::Entity, C>(conn, origin),
        entries_by_origin::<l2::Entity, C>(conn, origin),
        entries_by_origin::<l3::Entity, C>(conn, origin),
        entries_by_origin::<l4::Entity, C>(conn, origin),
    )?;
    let mut entries: Vec<LineageEntry> = Vec::with_capacity(e1.len() + e2.len() + e3.len() + e4.len());
    for e in [e1, e2, e3, e4] {
        entries.extend(e);
    }
    Ok(Lineage { focus: id, origin_id: origin, entries })
}

/// [`lineage`] the old way, loading whole rows, bodies and all. Gives the same entries; kept
/// to measure the difference (`hub-worker bench-queries`) and to check that it is the same.
pub async fn lineage_full_rows<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<Lineage> {
    use layer1_ingest::entity as l1;
    use layer2_normalize::entity as l2;
    use layer3_translate::entity as l3;
    use layer4_dispatch::entity as l4;
    let origin = origin(conn, id).await?;
    let mut entries: Vec<LineageEntry> = Vec::new();
    entries.extend(by_origin::<l1::Entity, C>(conn, origin).await?.iter().map(LineageEntry::from));
    entries.extend(by_origin::<l2::Entity, C>(conn, origin).await?.iter().map(LineageEntry::from));
    entries.extend(by_origin::<l3::Entity, C>(conn, origin).await?.iter().map(LineageEntry::from));
    entries.extend(by_origin::<l4::Entity, C>(conn, origin).await?.iter().map(LineageEntry::from));
    Ok(Lineage { focus: id, origin_id: origin, entries })
}

//! Per-key ordering: which rows with an ordering key the publisher may send now, as chains.
//!
//! The rule (docs/WIRE.md, "Receiving in order"): the messages of one destination and key
//! reach the broker in the order their payloads entered layer 1 (`origin_id`, then `id`).
//! A key's *head* is its earliest row not yet confirmed by the broker (`just_in`/`failed`); only
//! the head may be published, and the rows behind it follow once it is confirmed.
//!
//! One claim is one consistent decision, in this order inside one transaction:
//! 1. **fronts**: per source, the oldest message still open in layers 1 to 3. A row whose origin
//!    is not older than its source's front waits: that open message may still become an
//!    earlier row of its key. Messages move between layers in single transactions, so one
//!    statement sees each open message exactly once.
//! 2. **heads**, read *after* the fronts: a message that was past layer 3 when the fronts were
//!    read is visible to this later statement in layer 4 (READ COMMITTED sees every commit
//!    before the statement starts), so no earlier row of a key can be missed. Read the other way
//!    round, a message could leave layer 3 for layer 4 between the two reads and be seen by
//!    neither: the bug that let a later event overtake an earlier one with several workers.
//! 3. the heads are locked with `FOR UPDATE SKIP LOCKED`, which re-checks each row's status
//!    and due time on its newest version: a head another worker leased or confirmed meanwhile
//!    is skipped, and so is its key (a key is claimed through its head or not at all).
//! 4. **chains**: behind each locked head, the next rows of its key, due and older than the
//!    front. No other publisher can take them: they are not heads while our head is
//!    unconfirmed, and our lease keeps the head unconfirmed until we record the outcome.
//!
//! The publisher then sends the chains in waves: every head, then (as each is confirmed) the
//! row behind it, ... so a backlog of one key drains at broker confirm speed, not one row per
//! claim. Heads are found by skipping from key to key along the ordering index, starting after
//! the last key of the previous claim (so no key starves), without reading the rows behind each
//! head: the claim's cost follows the number of keys it takes, not the backlog's depth.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, Statement, Value};
use uuid::Uuid;

use crate::entity::{Entity, Model};

/// The longest chain taken behind one head in one claim.
const MAX_DEPTH: usize = 64;

/// Where the next claim starts looking for keys: after the last key the previous one reached.
pub(crate) type KeyCursor = std::sync::Mutex<Option<(String, String)>>;

/// Claims up to `budget` ordered rows of at most `max_keys` keys: chains of rows of one key
/// each, in order. Fewer keys than rows leaves keys for the other publishers running beside
/// this one, and longer chains spread a claim's fixed cost over more rows.
pub(crate) async fn claim(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
    budget: usize,
    max_keys: usize,
    cursor: &KeyCursor,
) -> layer1_ingest::Result<Vec<Vec<Model>>> {
    let budget = budget.max(1);
    let max_keys = max_keys.clamp(1, budget);
    if !any_unconfirmed(txn).await? {
        return Ok(Vec::new());
    }
    let fronts = open_fronts(txn).await?;
    let backend = txn.get_database_backend();
    let candidates = if backend == DbBackend::Postgres {
        let start = cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut heads = heads_pg(txn, now, max_keys, start.as_ref()).await?;
        if heads.len() < max_keys && start.is_some() {
            // Wrapped around: keys before the cursor too.
            let seen: std::collections::HashSet<Uuid> = heads.iter().map(|h| h.id).collect();
            let more = heads_pg(txn, now, max_keys - heads.len(), None).await?;
            heads.extend(more.into_iter().filter(|h| !seen.contains(&h.id)));
        }
        *cursor.lock().unwrap_or_else(|p| p.into_inner()) =
            heads.last().and_then(|h| h.ordering_key.clone().map(|k| (h.destination.clone(), k)));
        let heads: Vec<Model> = heads.into_iter().filter(|h| before_front(h, &fronts)).collect();
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        let locked = lock_heads(txn, now, &heads).await?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let depth = (budget / locked.len()).clamp(1, MAX_DEPTH);
        let rows = chains_pg(txn, &locked, depth).await?;
        build_chains(rows, Some(&locked.iter().map(|h| h.id).collect()), &fronts, now, budget)
    } else {
        // SQLite runs one worker on one connection: nothing to lock against, and no LATERAL.
        let rows = chains_sqlite(txn, MAX_DEPTH.min(budget)).await?;
        build_chains(rows, None, &fronts, now, budget)
    };
    Ok(candidates)
}

/// Whether any ordered row is unconfirmed at all (one probe of the ordering index). Only a
/// gate: skipping the claim when there is none cannot publish anything out of order.
async fn any_unconfirmed(txn: &DatabaseTransaction) -> layer1_ingest::Result<bool> {
    let backend = txn.get_database_backend();
    let sql = format!("SELECT 1 AS one FROM layer4_dispatch WHERE {UNCONFIRMED_ORDERED} LIMIT 1");
    Ok(txn.query_one_raw(Statement::from_string(backend, sql)).await?.is_some())
}

/// The ordering index's predicate, written as the index was made so PostgreSQL matches it.
const UNCONFIRMED_ORDERED: &str = "status IN ('just_in', 'failed') AND ordering_key IS NOT NULL";

/// Per source, the oldest origin (layer 1 id) of a message still open below layer 4.
async fn open_fronts(txn: &DatabaseTransaction) -> layer1_ingest::Result<HashMap<String, Uuid>> {
    let backend = txn.get_database_backend();
    // PostgreSQL before 16 has no min(uuid); the text form sorts like the bytes.
    let first = if backend == DbBackend::Postgres { "min(origin::text)" } else { "min(origin)" };
    let sql = format!(
        "SELECT source, {first} AS first_open FROM ( \
         SELECT source, id AS origin FROM layer1_raw WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         UNION ALL SELECT source, origin_id FROM layer2_normalized WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         UNION ALL SELECT source, origin_id FROM layer3_translated WHERE status IN ('just_in', 'failed') AND direction = 'upstream' \
         ) open_messages GROUP BY source"
    );
    let rows = txn.query_all_raw(Statement::from_string(backend, sql)).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let source: String = r.try_get("", "source")?;
        let first_open = if backend == DbBackend::Postgres {
            let text: String = r.try_get("", "first_open")?;
            text.parse()
                .map_err(|e| layer1_ingest::Error::Internal(format!("stored origin id `{text}`: {e}")))?
        } else {
            r.try_get::<Uuid>("", "first_open")?
        };
        out.insert(source, first_open);
    }
    Ok(out)
}

fn before_front(row: &Model, fronts: &HashMap<String, Uuid>) -> bool {
    fronts.get(&row.source).is_none_or(|front| row.origin_id < *front)
}

/// Up to `limit` due heads, one per key, in key order from after `start` (a loose index scan:
/// one index probe per key, whatever lies behind each head).
async fn heads_pg(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
    limit: usize,
    start: Option<&(String, String)>,
) -> layer1_ingest::Result<Vec<Model>> {
    let (after, mut values): (&str, Vec<Value>) = match start {
        Some((d, k)) => {
            ("AND (destination, ordering_key) > ($3, $4)", vec![d.clone().into(), k.clone().into()])
        }
        None => ("", Vec::new()),
    };
    values.insert(0, Value::ChronoDateTimeUtc(Some(now)));
    values.insert(1, Value::BigInt(Some(i64::try_from(limit).unwrap_or(i64::MAX))));
    let sql = format!(
        "WITH RECURSIVE keys AS ( \
           (SELECT destination, ordering_key FROM layer4_dispatch \
             WHERE {UNCONFIRMED_ORDERED} {after} \
             ORDER BY destination, ordering_key LIMIT 1) \
           UNION ALL \
           SELECT nxt.destination, nxt.ordering_key FROM keys k CROSS JOIN LATERAL ( \
             SELECT destination, ordering_key FROM layer4_dispatch \
              WHERE {UNCONFIRMED_ORDERED} \
                AND (destination, ordering_key) > (k.destination, k.ordering_key) \
              ORDER BY destination, ordering_key LIMIT 1) nxt \
         ) \
         SELECT h.* FROM keys k CROSS JOIN LATERAL ( \
           SELECT * FROM layer4_dispatch d \
            WHERE {UNCONFIRMED_ORDERED} \
              AND d.destination = k.destination AND d.ordering_key = k.ordering_key \
            ORDER BY d.origin_id, d.id LIMIT 1) h \
         WHERE h.direction = 'upstream' AND h.next_attempt_at <= $1 \
         LIMIT $2"
    );
    Ok(Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
        .all(txn)
        .await?)
}

/// Locks the heads still due and unconfirmed; heads another worker holds are skipped.
async fn lock_heads(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
    heads: &[Model],
) -> layer1_ingest::Result<Vec<Model>> {
    let ids: Vec<Value> = heads.iter().map(|h| h.id.into()).collect();
    let mut values = vec![Value::ChronoDateTimeUtc(Some(now))];
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    values.extend(ids);
    let sql = format!(
        "SELECT * FROM layer4_dispatch WHERE id IN ({}) AND {UNCONFIRMED_ORDERED} \
         AND next_attempt_at <= $1 FOR UPDATE SKIP LOCKED",
        placeholders.join(", ")
    );
    Ok(Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
        .all(txn)
        .await?)
}

/// The first `depth` unconfirmed rows of each locked head's key, heads included, in order.
async fn chains_pg(
    txn: &DatabaseTransaction,
    heads: &[Model],
    depth: usize,
) -> layer1_ingest::Result<Vec<Model>> {
    let mut values = vec![Value::BigInt(Some(depth as i64))];
    let placeholders: Vec<String> = (0..heads.len()).map(|i| format!("${}", i + 2)).collect();
    values.extend(heads.iter().map(|h| Value::from(h.id)));
    let sql = format!(
        "SELECT c.* FROM (SELECT DISTINCT destination, ordering_key FROM layer4_dispatch WHERE id IN ({})) k \
         CROSS JOIN LATERAL ( \
           SELECT * FROM layer4_dispatch d \
            WHERE {UNCONFIRMED_ORDERED} \
              AND d.destination = k.destination AND d.ordering_key = k.ordering_key \
            ORDER BY d.origin_id, d.id LIMIT $1) c \
         ORDER BY c.destination, c.ordering_key, c.origin_id, c.id",
        placeholders.join(", ")
    );
    Ok(Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
        .all(txn)
        .await?)
}

/// SQLite: the first `depth` unconfirmed rows of every key, in order.
async fn chains_sqlite(txn: &DatabaseTransaction, depth: usize) -> layer1_ingest::Result<Vec<Model>> {
    let sql = format!(
        "SELECT * FROM ( \
           SELECT d.*, row_number() OVER (PARTITION BY destination, ordering_key ORDER BY origin_id, id) AS rn \
             FROM layer4_dispatch d WHERE {UNCONFIRMED_ORDERED} AND direction = 'upstream') t \
         WHERE rn <= ? ORDER BY destination, ordering_key, origin_id, id"
    );
    Ok(Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [Value::BigInt(Some(depth as i64))],
        ))
        .all(txn)
        .await?)
}

/// Cuts `rows` (sorted by key, then layer 1 order) into chains: a key's chain starts at its
/// head only if the head is due, older than its source's front and (when `locked` is given)
/// locked by us; it runs on while the rows are due and older than the front. Chains are then
/// trimmed level by level (every head first, then every second row, ...) to `budget` rows.
fn build_chains(
    rows: Vec<Model>,
    locked: Option<&std::collections::HashSet<Uuid>>,
    fronts: &HashMap<String, Uuid>,
    now: DateTime<Utc>,
    budget: usize,
) -> Vec<Vec<Model>> {
    let due = |r: &Model| r.next_attempt_at.is_some_and(|t| t <= now);
    let mut chains: Vec<Vec<Model>> = Vec::new();
    let mut open = false;
    let mut last_key: Option<(String, Option<String>)> = None;
    for r in rows {
        let key = (r.destination.clone(), r.ordering_key.clone());
        let first_of_key = last_key.as_ref() != Some(&key);
        last_key = Some(key);
        if first_of_key {
            open = due(&r) && before_front(&r, fronts) && locked.is_none_or(|l| l.contains(&r.id));
            if open {
                chains.push(vec![r]);
            }
        } else if open {
            if due(&r) && before_front(&r, fronts) {
                if let Some(c) = chains.last_mut() {
                    c.push(r);
                }
            } else {
                open = false;
            }
        }
    }
    // Level by level, so every key gets its head before any key gets a second row.
    let mut left = budget;
    let mut keep = vec![0usize; chains.len()];
    let mut level = 0;
    while left > 0 {
        let mut took = false;
        for (i, c) in chains.iter().enumerate() {
            if left > 0 && c.len() > level {
                keep[i] += 1;
                left -= 1;
                took = true;
            }
        }
        if !took {
            break;
        }
        level += 1;
    }
    chains
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k > 0)
        .map(|(mut c, k)| {
            c.truncate(k);
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use layer1_ingest::{Direction, Status};

    fn row(key: &str, origin: u128, due: bool, now: DateTime<Utc>) -> Model {
        Model {
            id: Uuid::from_u128(origin * 10),
            direction: Direction::Upstream,
            status: Status::JustIn,
            attempts: 0,
            last_error: None,
            next_attempt_at: Some(if due { now } else { now + chrono::Duration::seconds(60) }),
            parent_id: None,
            origin_id: Uuid::from_u128(origin),
            source: "s".into(),
            source_ref: None,
            destination: "q".into(),
            message_type: "t".into(),
            type_version: "1".into(),
            body: "{}".into(),
            ordering_key: Some(key.into()),
            queued_at: None,
            acknowledged_at: None,
            intake_key: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_key_whose_head_is_not_due_is_skipped_whole() {
        let now = Utc::now();
        let rows = vec![
            row("a", 1, false, now),
            row("a", 2, true, now),
            row("b", 3, true, now),
            row("b", 4, true, now),
        ];
        let chains = build_chains(rows, None, &HashMap::new(), now, 10);
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].iter().map(|r| r.origin_id.as_u128()).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn chains_stop_at_the_front_and_at_a_row_not_due() {
        let now = Utc::now();
        let rows = vec![
            row("a", 1, true, now),
            row("a", 2, true, now),
            row("a", 5, true, now),
            row("b", 3, true, now),
            row("b", 4, false, now),
            row("b", 6, true, now),
        ];
        let fronts = HashMap::from([("s".to_owned(), Uuid::from_u128(5))]);
        let chains = build_chains(rows, None, &fronts, now, 10);
        let got: Vec<Vec<u128>> =
            chains.iter().map(|c| c.iter().map(|r| r.origin_id.as_u128()).collect()).collect();
        assert_eq!(got, vec![vec![1, 2], vec![3]]);
    }

    #[test]
    fn the_budget_gives_every_head_before_any_second_row() {
        let now = Utc::now();
        let rows = vec![
            row("a", 1, true, now),
            row("a", 2, true, now),
            row("a", 3, true, now),
            row("b", 4, true, now),
            row("c", 5, true, now),
        ];
        let chains = build_chains(rows, None, &HashMap::new(), now, 4);
        let got: Vec<usize> = chains.iter().map(Vec::len).collect();
        assert_eq!(got, vec![2, 1, 1]);
    }

    #[test]
    fn only_locked_heads_start_chains() {
        let now = Utc::now();
        let rows = vec![row("a", 1, true, now), row("a", 2, true, now), row("b", 3, true, now)];
        let locked = std::collections::HashSet::from([Uuid::from_u128(30)]);
        let chains = build_chains(rows, Some(&locked), &HashMap::new(), now, 10);
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0][0].origin_id.as_u128(), 3);
    }
}

//! `hub-worker bench-queries`: how the audit desk's reads scale with the tables. Seeds a
//! PostgreSQL database with N messages (one row per layer each, most of them final, as on a
//! hub that has run for a long time) by set-based SQL, then times, as the median of several
//! runs, a lineage lookup, a `/metrics` scrape and the "is anything still open?" question of
//! `Hub::wait_settled`, each the old way (the queries before migration 000010, kept callable)
//! and the new.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;

use crate::error::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct QueryBenchConfig {
    /// A scratch PostgreSQL database (created when missing; its layer tables are filled).
    pub database_url: String,
    /// Messages to seed (each one row in every layer).
    pub messages: u64,
    /// Runs per figure; the median is printed.
    pub runs: usize,
    /// Empty the four layer tables first and seed again.
    pub fresh: bool,
}

/// The source name of the seeded rows.
const SOURCE: &str = "bench_queries";

/// Median, minimum and maximum of some timings, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Median.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
}

fn timing(mut v: Vec<Duration>) -> Timing {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(b)) => Timing { median_ms: ms(*m), min_ms: ms(*a), max_ms: ms(*b) },
        _ => Timing { median_ms: f64::NAN, min_ms: f64::NAN, max_ms: f64::NAN },
    }
}

/// The figures: (what, before, after).
#[derive(Debug, Clone)]
pub struct QueryBenchReport {
    /// Messages in the tables (rows per layer).
    pub messages: i64,
    /// One line per measured question.
    pub figures: Vec<(&'static str, Timing, Timing)>,
}

/// Makes the database of `url` if it does not exist (on the same server, through `postgres`).
async fn ensure_database(url: &str) -> Result<()> {
    let (server, name) = url
        .rsplit_once('/')
        .ok_or_else(|| Error::Config(format!("{url}: a PostgreSQL URL ending in /database")))?;
    let name = name.split('?').next().unwrap_or(name);
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
        return Err(Error::Config(format!("database name `{name}`: letters, digits and _ only")));
    }
    let admin = sea_orm::Database::connect(format!("{server}/postgres")).await?;
    let exists = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT 1 AS one FROM pg_database WHERE datname = '{name}'"),
        ))
        .await?
        .is_some();
    if !exists {
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
    }
    admin.close().await?;
    Ok(())
}

/// The statements that seed `n` messages: layer 1 `forwarded`, 2 and 3 `forwarded`, layer 4
/// mostly `acknowledged`, 1% `dead`, 0.1% `queued`, 0.02% `just_in` (due tomorrow, so that a
/// hub started on the database leaves them alone), over two destinations. Ids are derived
/// from the message number so that the layers link up.
fn seed_sql(n: u64) -> [String; 4] {
    let series = format!(
        "SELECT i, now() - make_interval(secs => ({n} - i) / 10.0) AS t FROM generate_series(1, {n}) AS i"
    );
    let id = |layer: u8| format!("md5('{SOURCE}-{layer}-' || i)::uuid");
    let l1 = format!(
        "INSERT INTO layer1_raw (id, direction, status, attempts, last_error, next_attempt_at, parent_id, \
         origin_id, source, source_ref, dedup_key, body, content_type, headers, body_sha256, created_at, updated_at) \
         SELECT {id1}, 'upstream', 'forwarded', 0, NULL, NULL, NULL, {id1}, '{SOURCE}', 'evt_' || i, 'evt_' || i, \
         b, 'application/json', '{{}}', encode(sha256(b), 'hex'), t, t \
         FROM (SELECT i, t, convert_to(format('{{\"id\":\"evt_%s\",\"object\":\"event\",\"type\":\"payment.succeeded\",\
\"created\":\"2026-11-20T13:05:42Z\",\"data\":{{\"payment\":{{\"id\":\"pay_%s\",\"amount\":\"%s.%s\",\"currency\":\"eur\",\
\"customer\":\"cus_%s\",\"description\":\"seeded by hub-worker bench-queries\",\"metadata\":{{\"order\":\"ord_%s\"}}}}}}}}', \
         i, i, 1000 + i % 5000, lpad((i % 100)::text, 2, '0'), i % 997, i), 'UTF8') AS b FROM ({series}) s) s",
        id1 = id(1)
    );
    let l2 = format!(
        "INSERT INTO layer2_normalized (id, direction, status, attempts, last_error, next_attempt_at, parent_id, \
         origin_id, source, source_ref, record_kind, record_index, record, schema_version, created_at, updated_at) \
         SELECT {id2}, 'upstream', 'forwarded', 0, NULL, NULL, {id1}, {id1}, '{SOURCE}', 'pay_' || i, 'payment', 0, \
         format('{{\"payment_id\":\"pay_%s\",\"amount\":\"%s.00\",\"currency\":\"EUR\",\"customer_id\":\"cus_%s\"}}', \
         i, 1000 + i % 5000, i % 997), '1', t, t FROM ({series}) s",
        id1 = id(1),
        id2 = id(2)
    );
    let l3 = format!(
        "INSERT INTO layer3_translated (id, direction, status, attempts, last_error, next_attempt_at, parent_id, \
         origin_id, source, source_ref, message_type, type_version, body, mapping_name, mapping_version, fidelity, \
         created_at, updated_at) \
         SELECT {id3}, 'upstream', 'forwarded', 0, NULL, NULL, {id2}, {id1}, '{SOURCE}', 'pay_' || i, \
         'payment.recorded', '1', format('{{\"payment_id\":\"pay_%s\",\"amount_minor\":%s00,\"currency\":\"EUR\",\
\"customer\":\"cus_%s\"}}', i, 1000 + i % 5000, i % 997), 'payments', '1', '{{}}', t, t FROM ({series}) s",
        id1 = id(1),
        id2 = id(2),
        id3 = id(3)
    );
    let l4 = format!(
        "INSERT INTO layer4_dispatch (id, direction, status, attempts, last_error, next_attempt_at, parent_id, \
         origin_id, source, source_ref, destination, message_type, type_version, body, ordering_key, queued_at, \
         acknowledged_at, intake_key, created_at, updated_at) \
         SELECT {id4}, 'upstream', st, CASE WHEN st = 'dead' THEN 5 ELSE 1 END, \
         CASE WHEN st = 'dead' THEN 'broker unreachable (gave up after 5 attempts)' END, \
         CASE WHEN st IN ('just_in', 'queued') THEN now() + interval '1 day' END, {id3}, {id1}, '{SOURCE}', \
         'pay_' || i, CASE WHEN i % 2 = 0 THEN 'core.payments' ELSE 'core.ledger' END, 'payment.recorded', '1', \
         format('{{\"payment_id\":\"pay_%s\",\"amount_minor\":%s00,\"currency\":\"EUR\",\"customer\":\"cus_%s\"}}', \
         i, 1000 + i % 5000, i % 997), NULL, CASE WHEN st IN ('queued', 'acknowledged') THEN t END, \
         CASE WHEN st = 'acknowledged' THEN t END, NULL, t, t \
         FROM (SELECT i, t, CASE WHEN i % 5000 = 7 THEN 'just_in' WHEN i % 1000 = 3 THEN 'queued' \
               WHEN i % 100 = 5 THEN 'dead' ELSE 'acknowledged' END AS st FROM ({series}) s) s",
        id1 = id(1),
        id3 = id(3),
        id4 = id(4)
    );
    [l1, l2, l3, l4]
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let row = db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned())).await?;
    Ok(match row {
        Some(r) => r.try_get_by_index::<i64>(0)?,
        None => 0,
    })
}

/// Seeds when needed, then measures.
pub async fn run(cfg: &QueryBenchConfig) -> Result<QueryBenchReport> {
    if !cfg.database_url.starts_with("postgres") {
        return Err(Error::Config("bench-queries measures PostgreSQL: give a postgres:// URL".into()));
    }
    ensure_database(&cfg.database_url).await?;
    let db = layer1_ingest::db::connect(&cfg.database_url).await?;
    {
        use migrations::MigratorTrait;
        migrations::Migrator::up(&db, None).await?;
    }
    if cfg.fresh {
        // TRUNCATE empties the summary's rows of these tables too (its trigger).
        db.execute_unprepared("TRUNCATE layer4_dispatch, layer3_translated, layer2_normalized, layer1_raw")
            .await?;
    }
    let have = scalar(&db, &format!("SELECT count(*) FROM layer1_raw WHERE source = '{SOURCE}'")).await?;
    if have == 0 {
        let n = cfg.messages;
        eprintln!("seeding {n} messages (one row per layer each)...");
        for (layer, sql) in seed_sql(n).iter().enumerate() {
            let t = Instant::now();
            db.execute_unprepared(sql).await?;
            eprintln!("  layer {}: {:.1} s", layer + 1, t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        for table in ["layer1_raw", "layer2_normalized", "layer3_translated", "layer4_dispatch"] {
            // Statistics and the visibility map, as autovacuum leaves a long-lived table.
            db.execute_unprepared(&format!("VACUUM ANALYZE {table}")).await?;
        }
        crate::summary::fold(&db).await?;
        eprintln!("  vacuum analyze: {:.1} s", t.elapsed().as_secs_f64());
    } else if have as u64 != cfg.messages {
        eprintln!(
            "the database holds {have} seeded messages (not {}): measuring those; --fresh seeds again",
            cfg.messages
        );
    }
    let messages = scalar(&db, "SELECT count(*) FROM layer1_raw").await?;

    // Messages spread over the table, each looked up from its layer 4 id (the id a receipt or
    // an operator usually has); the same ones before and after.
    let total =
        scalar(&db, &format!("SELECT count(*) FROM layer4_dispatch WHERE source = '{SOURCE}'")).await?;
    let picks: Vec<String> =
        (0..cfg.runs as i64).map(|k| (1 + (k * 7919 * 131 + total / 3) % total.max(1)).to_string()).collect();
    let ids: Vec<Uuid> = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT md5('{SOURCE}-4-' || i)::uuid AS id FROM unnest(ARRAY[{}]::bigint[]) AS i",
                picks.join(", ")
            ),
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<Uuid>("", "id"))
        .collect::<std::result::Result<_, _>>()?;
    let mut figures = Vec::new();
    // One untimed round of each, so that neither side pays for reading pages from disk first
    // (both sides then run from the same warm cache: the figures compare queries, not I/O).
    if let Some(id) = ids.first() {
        crate::lineage::lineage_full_rows(&db, *id).await?;
        crate::lineage::lineage(&db, *id).await?;
    }
    crate::audit::stats_by_scan(&db).await?;
    crate::http::audit::metrics_text(&db).await?;
    crate::summary::anything_open(&db).await?;

    let (mut before, mut after) = (Vec::new(), Vec::new());
    for id in &ids {
        let t = Instant::now();
        let old = crate::lineage::lineage_full_rows(&db, *id).await?;
        before.push(t.elapsed());
        let t = Instant::now();
        let new = crate::lineage::lineage(&db, *id).await?;
        after.push(t.elapsed());
        if old.entries.len() != new.entries.len() || old.entries.len() < 4 {
            return Err(Error::Config(format!(
                "lineage of {id}: {} rows the old way, {} the new (4 expected)",
                old.entries.len(),
                new.entries.len()
            )));
        }
    }
    figures.push(("lineage lookup (layer 4 id)", timing(before), timing(after)));

    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        let t = Instant::now();
        let old = crate::http::audit::render_metrics(&crate::audit::stats_by_scan(&db).await?);
        before.push(t.elapsed());
        let t = Instant::now();
        let new = crate::http::audit::metrics_text(&db).await?;
        after.push(t.elapsed());
        // The same text but for the age gauge (seconds pass between the two).
        let strip = |s: &str| {
            s.lines().filter(|l| !l.contains("oldest_unacknowledged_seconds{")).collect::<Vec<_>>().join("\n")
        };
        if strip(&old) != strip(&new) {
            return Err(Error::Config(format!("/metrics differ:\n--- old\n{old}\n--- new\n{new}")));
        }
    }
    figures.push(("/metrics scrape", timing(before), timing(after)));

    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        let t = Instant::now();
        let old = !crate::hub::counts_by_scan(&db).await?.iter().all(|c| c.status.is_final());
        before.push(t.elapsed());
        let t = Instant::now();
        let new = crate::summary::anything_open(&db).await?;
        after.push(t.elapsed());
        if old != new {
            return Err(Error::Config(format!("anything open: {old} the old way, {new} the new")));
        }
    }
    figures.push(("wait_settled's question", timing(before), timing(after)));

    Ok(QueryBenchReport { messages, figures })
}

//! `hub-worker`: the post office's command line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use hub_worker::config::Config;
use hub_worker::{demo, report};
use migrations::{Migrator, MigratorTrait};

/// The hub allocates and frees many small buffers per message (frames, rows, JSON); mimalloc
/// does that with less contention than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `bench --transport`'s default: the first broker this build has.
const DEFAULT_BENCH_TRANSPORT: &str = if cfg!(feature = "rabbitmq") {
    "rabbitmq"
} else if cfg!(feature = "sqs") {
    "sqs"
} else {
    "in-process"
};

#[derive(Parser)]
#[command(name = "hub-worker", version, about = "The post office: a layered integration hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DbArgs {
    /// Database URL (overrides the config file and HUB_DATABASE__URL).
    #[arg(long)]
    database_url: Option<String>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl DbArgs {
    fn url(&self) -> anyhow::Result<String> {
        if let Some(u) = &self.database_url {
            return Ok(u.clone());
        }
        Ok(Config::database_url(self.config.as_deref())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Applies pending schema migrations.
    Migrate(DbArgs),
    /// Runs the whole post office in one process on SQLite and the in-process transport.
    Demo {
        /// The SQLite file to create (replaced if it exists).
        #[arg(long, default_value = "post-office-demo.sqlite")]
        db: PathBuf,
    },
    /// Prints a message's story from any layer's id, or from the core app's id of a message it
    /// sent downstream (every target's flow): its rows and, downstream, each delivery attempt
    /// with the answer and the receipts.
    Trace {
        /// A layer 1, 2, 3 or 4 id, or a `core-message-id`.
        id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text (the audit desk's answer for the message).
        #[arg(long)]
        json: bool,
        /// With --json: include the raw bytes (payloads, requests delivered, the third party's
        /// answers) in base64 and the integrations' `redact` fields unmasked, as a token with
        /// scope `raw` sees them. Without it, those fields are masked as the `--config`'s
        /// integration files say.
        #[arg(long, requires = "json")]
        raw: bool,
    },
    /// Pushes N messages through all four layers and prints throughput and latencies.
    Bench {
        /// Database URL: a scratch PostgreSQL database for meaningful figures.
        #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432/test")]
        database_url: String,
        /// `rabbitmq`, `sqs` or `in-process` (the brokers as far as this build has them).
        #[arg(long, default_value = DEFAULT_BENCH_TRANSPORT)]
        transport: String,
        /// AMQP URL for `--transport rabbitmq`.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Endpoint for `--transport sqs`.
        #[arg(long, default_value = "http://127.0.0.1:4566")]
        sqs_endpoint: String,
        /// Messages.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Stage batch size.
        #[arg(long, default_value_t = 500)]
        batch_size: u64,
        /// Receivers acknowledging in parallel.
        #[arg(long, default_value_t = 2)]
        receivers: usize,
        /// Delete every row of the four layer tables first (scratch databases only).
        #[arg(long)]
        fresh: bool,
        /// Run the payments integration from this integrations directory (schema + declarative
        /// mapping) instead of the built-in Rust one.
        #[arg(long)]
        integrations_dir: Option<PathBuf>,
        /// Instead: a backlog drain. With the broker held down, the messages pile up in layer
        /// 4 spread over this many ordering keys; then the broker comes back. Prints the drain
        /// rate of that ordered backlog and of an unordered one of the same size.
        #[arg(long)]
        backlog_keys: Option<usize>,
        /// `upstream` (third party -> core app, the default) or `downstream`: core messages
        /// published to the inbound queue, delivered to a local HTTP sink, answered with
        /// delivery receipts.
        #[arg(long, default_value = "upstream")]
        direction: String,
    },
    /// Seeds a scratch PostgreSQL database with N messages (four layers) and times a lineage
    /// lookup, a /metrics scrape and wait_settled's question, the old queries against the new.
    BenchQueries {
        /// A scratch PostgreSQL database (created when missing).
        #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432/po_bench_queries")]
        database_url: String,
        /// Messages to seed (one row per layer each).
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Runs per figure (the median is printed).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Empty the four layer tables and seed again.
        #[arg(long)]
        fresh: bool,
    },
    /// Lists messages of one layer (JSON, keyset pages).
    Messages {
        #[command(subcommand)]
        what: MessagesCommand,
    },
    /// Counts per layer and status, and per destination health (JSON).
    Stats {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Sends one message (by id), or every message of a source since a time, through a layer
    /// again (`--from-layer 3` translates again with the current mapping); the new rows link to
    /// the old ones, which stay.
    Replay {
        /// Any layer's id of the message (or use --source and --since).
        #[arg(required_unless_present = "source", conflicts_with_all = ["source", "since"])]
        id: Option<uuid::Uuid>,
        /// Every message this source sent...
        #[arg(long, requires = "since")]
        source: Option<String>,
        /// ...received at or after this time (RFC 3339).
        #[arg(long, requires = "source")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// The layer whose work is done again, 1 to 4.
        #[arg(long)]
        from_layer: u8,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Runs a pulled source once, now, to the end of its listing (or its page bound), and
    /// prints the run's report; exits non-zero when the run failed or another run holds the
    /// source. Only stores the pages (in layer 1): a running worker processes them. No broker
    /// is contacted.
    Sync {
        /// The pulled source (an integration file with [pull]).
        source: String,
        /// Configuration file (TOML): the database and the integration files.
        #[arg(long)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints a pulled source's saved state as JSON (what `GET /v1/sources/{source}/state`
    /// answers): cursor, unfinished listing, lease, totals, last and next run, schedule.
    State {
        /// The pulled source.
        source: String,
        /// Configuration file (TOML): the database and the integration files.
        #[arg(long)]
        config: PathBuf,
        /// First forget the source's cursor, unfinished listing and taken records (the next
        /// run reads everything again); refused while a run holds the source.
        #[arg(long)]
        reset: bool,
    },
    /// Loads the configuration and its integration files and reports every problem with its
    /// file and line; exits non-zero on any.
    Check {
        /// Configuration file (TOML).
        #[arg(long, default_value = "config/hub-worker.example.toml")]
        config: PathBuf,
    },
    /// Runs the stages until Ctrl-C or SIGTERM (refusing to start on any problem `check`
    /// reports).
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum MessagesCommand {
    /// One page of a layer's rows.
    List {
        /// Layer 1 to 4.
        #[arg(long, default_value_t = 1)]
        layer: u8,
        /// Status (`rejected`, `dead`, ...).
        #[arg(long)]
        status: Option<String>,
        /// Source.
        #[arg(long)]
        source: Option<String>,
        /// `upstream` or `downstream`.
        #[arg(long)]
        direction: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Created before (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<uuid::Uuid>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Audit events (target `audit`: refused admin requests, replays) are on by default.
        .with_env_filter(
            EnvFilter::try_from_env("HUB_LOG").unwrap_or_else(|_| EnvFilter::new("warn,audit=info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs (audit events included) going to a file or a
        // collector stay plain text a machine can parse.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Migrate(args) => {
            let db = layer1_ingest::db::connect(&args.url()?).await?;
            Migrator::up(&db, None).await.context("applying migrations")?;
            println!("migrations applied");
        }
        Command::Demo { db } => {
            let r = demo::run(&db).await?;
            print!("{}", r.text);
            if !r.ok {
                bail!("the demo did not end as expected");
            }
        }
        Command::Trace { id, db, json, raw } => {
            use hub_worker::audit::{AuditConfig, RawAccess, trace_with};
            let conn = layer1_ingest::db::connect(&db.url()?).await?;
            let access = if raw { RawAccess::Shown } else { RawAccess::Withheld };
            // The integration files' `redact` rules, as the audit desk has them: from the config
            // file (or the HUB_* environment) when there is one.
            // With --raw nothing is masked: the setup only names `hub-receipt-to`, if it loads.
            let audit = match Config::load(db.config.as_deref()) {
                Ok(cfg) if raw => cfg.audit_config().unwrap_or_default(),
                Ok(cfg) => cfg.audit_config().context("loading the integrations' redact rules")?,
                Err(_) if raw => AuditConfig::default(),
                Err(e) if db.config.is_some() => return Err(e.into()),
                Err(_) => {
                    eprintln!(
                        "note: no configuration (--config): the integrations' redact rules are unknown, \
                         so every layer's content is shown as stored"
                    );
                    AuditConfig::default()
                }
            };
            let mut views = trace_with(&conn, &id, access, &audit).await?;
            if json {
                // One message as `GET /v1/messages/{id}` answers it; a core id's flows as
                // `GET /v1/core-messages/{id}` does.
                if views.len() == 1
                    && id.trim().parse::<uuid::Uuid>().is_ok_and(|u| views[0].lineage.focus == u)
                {
                    println!("{}", serde_json::to_string_pretty(&views.remove(0))?);
                } else {
                    let all = hub_worker::audit::CoreMessageViews { items: views };
                    println!("{}", serde_json::to_string_pretty(&all)?);
                }
            } else {
                let texts: Vec<String> = views.iter().map(report::message_text).collect();
                print!("{}", texts.join("\n"));
            }
        }
        Command::BenchQueries { database_url, messages, runs, fresh } => {
            let cfg = hub_worker::bench_queries::QueryBenchConfig {
                database_url,
                messages,
                runs: runs.max(1),
                fresh,
            };
            let r = hub_worker::bench_queries::run(&cfg).await?;
            println!(
                "hub bench-queries: {} messages per layer table, median of {} runs",
                r.messages, cfg.runs
            );
            println!("  {:<30} {:>12} {:>12}   (min..max before | after)", "", "before", "after");
            for (what, before, after) in &r.figures {
                println!(
                    "  {what:<30} {:>9.2} ms {:>9.2} ms   ({:.2}..{:.2} | {:.2}..{:.2})",
                    before.median_ms,
                    after.median_ms,
                    before.min_ms,
                    before.max_ms,
                    after.min_ms,
                    after.max_ms
                );
            }
        }
        Command::Bench {
            database_url,
            transport,
            amqp_url,
            sqs_endpoint,
            messages,
            batch_size,
            receivers,
            fresh,
            integrations_dir,
            backlog_keys,
            direction,
        } => {
            use layer4_dispatch::{InProcessTransport, Transport};
            #[cfg(feature = "rabbitmq")]
            use layer4_dispatch::{RabbitMqConfig, RabbitMqTransport};
            #[cfg(feature = "sqs")]
            use layer4_dispatch::{SqsConfig, SqsTransport};
            // Their flags exist in every build, so scripts keep working; unused without the feature.
            let _ = (&amqp_url, &sqs_endpoint);
            let t: std::sync::Arc<dyn Transport> = match transport.as_str() {
                #[cfg(feature = "rabbitmq")]
                "rabbitmq" => {
                    // The run's queues go away a minute after it ends.
                    let mut c = RabbitMqConfig::new(amqp_url);
                    c.queue_expires_ms = Some(60_000);
                    std::sync::Arc::new(RabbitMqTransport::new(c))
                }
                #[cfg(feature = "sqs")]
                "sqs" => std::sync::Arc::new(SqsTransport::new(SqsConfig::local(sqs_endpoint)).await),
                "in-process" => std::sync::Arc::new(InProcessTransport::default()),
                // A guard, not a pattern: with the feature on, its arm above takes the name first.
                other if matches!(other, "rabbitmq" | "sqs") => {
                    bail!("this build has no {other} transport (cargo feature `{other}`)")
                }
                other => bail!("unknown transport `{other}` (rabbitmq, sqs, in-process)"),
            };
            let cfg = hub_worker::bench::BenchConfig {
                database_url: database_url.clone(),
                messages,
                batch_size,
                receivers,
                fresh,
                integrations_dir: integrations_dir.clone(),
            };
            match direction.as_str() {
                "upstream" => {}
                "downstream" => {
                    let r = hub_worker::bench_downstream::run(&database_url, messages, batch_size, fresh, t)
                        .await?;
                    println!(
                        "hub bench direction=downstream n={} transport={transport} db={} batch={batch_size}",
                        r.messages,
                        database_url.split(':').next().unwrap_or("?")
                    );
                    println!(
                        "  throughput: {:.0} deliveries/s ({:.2} s from first publish to last receipt)",
                        r.rate, r.seconds
                    );
                    println!(
                        "  publish -> receipt: p50 {:>8.1} ms  p99 {:>8.1} ms",
                        r.receipt_ms.0, r.receipt_ms.1
                    );
                    println!(
                        "  receipts: {} ({} acknowledged); requests the sink answered: {}",
                        r.messages, r.acknowledged, r.requests
                    );
                    return Ok(());
                }
                other => bail!("unknown direction `{other}` (upstream, downstream)"),
            }
            if let Some(keys) = backlog_keys {
                let unordered = hub_worker::bench::drain(&cfg, t.clone(), 0).await?;
                let ordered = hub_worker::bench::drain(&cfg, t, keys.max(1)).await?;
                println!("hub backlog drain n={messages} transport={transport} batch={batch_size}");
                for r in [&unordered, &ordered] {
                    let what = if r.keys == 0 {
                        "unordered".to_owned()
                    } else {
                        format!("ordered over {} keys", r.keys)
                    };
                    println!(
                        "  {what:<24} {:>8.0} msg/s ({} rows in {:.2} s)",
                        r.rate, r.messages, r.seconds
                    );
                }
                println!(
                    "  ordered / unordered: {:.2}",
                    ordered.rate / unordered.rate.max(f64::MIN_POSITIVE)
                );
                return Ok(());
            }
            let r = hub_worker::bench::run(&cfg, t).await?;
            println!(
                "hub bench n={} transport={transport} db={} batch={batch_size} receivers={receivers} integration={}",
                r.messages,
                database_url.split(':').next().unwrap_or("?"),
                if integrations_dir.is_some() { "files" } else { "built-in" }
            );
            println!(
                "  throughput: {:.0} msg/s ({:.2} s from first ingest to last acknowledged)",
                r.rate, r.seconds
            );
            println!(
                "  ingest -> queued:       p50 {:>8.1} ms  p99 {:>8.1} ms",
                r.queued_ms.0, r.queued_ms.1
            );
            println!("  ingest -> acknowledged: p50 {:>8.1} ms  p99 {:>8.1} ms", r.acked_ms.0, r.acked_ms.1);
        }
        Command::Messages {
            what: MessagesCommand::List { layer, status, source, direction, since, until, limit, cursor, db },
        } => {
            let conn = layer1_ingest::db::connect(&db.url()?).await?;
            let q = hub_worker::audit::ListQuery {
                layer: Some(layer),
                status,
                source,
                direction,
                since,
                until,
                limit: Some(limit),
                cursor,
            };
            println!("{}", serde_json::to_string_pretty(&hub_worker::audit::list(&conn, &q).await?)?);
        }
        Command::Stats { db } => {
            let conn = layer1_ingest::db::connect(&db.url()?).await?;
            println!("{}", serde_json::to_string_pretty(&hub_worker::audit::stats(&conn).await?)?);
        }
        Command::Replay { id, source, since, from_layer, db } => {
            let conn = layer1_ingest::db::connect(&db.url()?).await?;
            // Recorded as `replayed_by = cli`: whoever can run this holds the database URL.
            let (what, result) = match (id, source, since) {
                (Some(id), _, _) => (
                    format!("message {id}"),
                    hub_worker::audit::replay(&conn, id, from_layer, "cli").await.map(|ids| (ids, 0)),
                ),
                (None, Some(source), Some(since)) => (
                    format!("source {source} since {}", since.to_rfc3339()),
                    hub_worker::audit::replay_source(&conn, &source, since, from_layer, "cli")
                        .await
                        .map(|r| (r.replayed, r.skipped_moving)),
                ),
                _ => bail!("give a message id, or --source and --since"),
            };
            // The same audit event as a replay over HTTP; "from where" is this machine.
            hub_worker::http::auth::ReplayEvent {
                who: "cli",
                method: "CLI",
                path: "replay",
                peer: "local",
                what: &what,
                from_layer,
            }
            .log(
                if result.is_ok() { "replayed" } else { "not replayed" },
                result.as_ref().map_or(0, |(ids, _)| ids.len()),
            );
            let (ids, skipped) = result?;
            println!(
                "replayed through layer {from_layer} as {} new row(s); a running worker carries them on:",
                ids.len()
            );
            for i in ids {
                println!("  {i}");
            }
            if skipped > 0 {
                println!("skipped {skipped} row(s) still moving: replay them once they settle");
            }
        }
        Command::Sync { source, config, json } => {
            let hub = pull_hub(&config).await?;
            // Ctrl-C or SIGTERM: the run stops after the page it is on (recorded as failed, the
            // next run resumes from there); a second one exits at once.
            let stop_signal = stop_requested()?;
            let stopper = tokio::spawn({
                let hub = hub.clone();
                async move {
                    let signal = stop_signal.await;
                    eprintln!("{signal} received: stopping after the current page (again to exit now)");
                    hub.shutdown().await;
                    if let Ok(again) = stop_requested() {
                        again.await;
                        std::process::exit(130);
                    }
                }
            });
            let result = hub.sync_now(&source, hub_worker::pull::Trigger::Cli).await;
            stopper.abort();
            cli_audit_event(
                "sync",
                &source,
                match &result {
                    Ok(r) => r.outcome.as_str(),
                    Err(hub_worker::Error::Conflict(_)) => "refused: a run holds the source",
                    Err(hub_worker::Error::NotPulled(_)) => "refused: not a pulled source",
                    Err(_) => "failed",
                },
            );
            hub.shutdown().await;
            let report = result?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", run_report_text(&report));
            }
            if report.outcome == hub_worker::pull::RunOutcome::Failed {
                bail!("the run failed: {}", report.error.as_deref().unwrap_or("(no reason on record)"));
            }
        }
        Command::State { source, config, reset } => {
            let hub = pull_hub(&config).await?;
            if reset {
                let result = hub.reset_pull_state(&source).await;
                cli_audit_event(
                    "state reset",
                    &source,
                    match &result {
                        Ok(()) => "reset",
                        Err(hub_worker::Error::Conflict(_)) => "refused: a run holds the source",
                        Err(hub_worker::Error::NotPulled(_)) => "refused: not a pulled source",
                        Err(_) => "failed",
                    },
                );
                result?;
                eprintln!(
                    "state of `{source}` reset: its cursor, unfinished listing and taken records are forgotten; \
                     the next run reads everything again"
                );
            }
            let state = hub_worker::audit::source_state(&hub, &source).await;
            hub.shutdown().await;
            println!("{}", serde_json::to_string_pretty(&state?)?);
        }
        Command::Check { config } => match hub_worker::config::prepare(&config) {
            Ok((cfg, files)) => {
                println!(
                    "{}: ok ({} built-in and {} file integration(s), {} route(s), {} outbound route(s))",
                    config.display(),
                    cfg.integrations.len(),
                    files.len(),
                    cfg.routes.len() + files.iter().map(|f| f.routes.len()).sum::<usize>(),
                    files.iter().filter_map(|f| f.outbound.as_ref()).map(|o| o.routes.len()).sum::<usize>()
                );
            }
            Err(diags) => {
                for d in &diags {
                    eprintln!("{d}");
                }
                bail!("{} problem(s) found", diags.len());
            }
        },
        Command::Run { config } => {
            let (cfg, files) = match hub_worker::config::prepare(&config) {
                Ok(ok) => ok,
                Err(diags) => {
                    for d in &diags {
                        eprintln!("{d}");
                    }
                    bail!(
                        "not starting: {} problem(s) in the configuration (see `hub-worker check`)",
                        diags.len()
                    );
                }
            };
            // Front doors (and their secrets) only with the HTTP server on.
            let doors = if cfg.http.is_some() { cfg.doors(&files)? } else { Default::default() };
            // Everything read from files and the environment is read before anything is waited
            // for: a configuration mistake exits at once, only unreachable dependencies wait.
            let tls = cfg.http_tls()?;
            let tokens = match &cfg.http {
                Some(http) => {
                    if http.uses_admin_shorthand() {
                        tracing::warn!(
                            "http.admin_token_env (or HUB_ADMIN_TOKEN alone) is deprecated: one token with every \
                             scope; configure [http.tokens.<name>] with scopes instead"
                        );
                    }
                    Some(http.tokens()?)
                }
                None => None,
            };
            if let hub_worker::config::TransportConfig::InProcess(t) = &cfg.transport {
                // Only reachable with the opt-in (`prepare` refuses it otherwise).
                tracing::warn!(
                    max_queued = t.max_queued,
                    "transport in-process with accept_without_consumer: nothing consumes the destination \
                     queues; messages stop at layer 4 (queued in memory up to max_queued per queue, the rest \
                     waiting unpublished)"
                );
            }
            // Ctrl-C or SIGTERM from now on, waiting for the database and the broker included.
            // Listening starts here, before anything is waited for, so a stop asked for during
            // the wait is not lost.
            let stop = tokio_util::sync::CancellationToken::new();
            let stop_signal = stop_requested()?;
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    let signal = stop_signal.await;
                    eprintln!("{signal} received");
                    stop.cancel();
                }
            });
            let wait = hub_worker::startup::Wait::new(stop.clone());
            // The server starts before the hub: /healthz answers and /readyz says what is
            // missing while the database or the broker is still away.
            let gate = hub_worker::http::gate::Gate::new(wait.progress.clone());
            // The server stops when the process is asked to: the same token as everything else.
            let server = match &cfg.http {
                Some(http) => {
                    let listener = tokio::net::TcpListener::bind(&http.listen)
                        .await
                        .with_context(|| format!("listening on {}", http.listen))?;
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    let url = format!("{scheme}://{}", listener.local_addr()?);
                    eprintln!("listening on {url} (/healthz, /readyz; everything else once the hub is up)");
                    let app = gate.router();
                    let task = match tls {
                        #[cfg(feature = "tls")]
                        Some(tls) => {
                            tokio::spawn(hub_worker::http::serve_tls(listener, tls, app, stop.clone()))
                        }
                        #[cfg(not(feature = "tls"))]
                        Some(never) => match never {},
                        None => tokio::spawn(hub_worker::http::serve(listener, app, stop.clone())),
                    };
                    Some((task, url))
                }
                None => None,
            };
            let hub = match cfg.hub_builder(files).await?.wait_for_dependencies(wait).build().await {
                Ok(hub) => hub,
                // Ctrl-C before the hub was up: nothing was claimed, nothing to finish.
                Err(hub_worker::Error::Stopped(why)) => {
                    eprintln!("{why}; exiting");
                    if let Some((s, _)) = server {
                        s.await.context("http server task")?.context("http server")?;
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            hub.start();
            if let (Some(http), Some(tokens)) = (&cfg.http, tokens) {
                let state = hub_worker::http::ingest::IngestState::new(hub.clone(), doors)
                    .max_in_flight(http.max_in_flight);
                let audit = hub_worker::http::audit::AuditState::with_tokens(hub.clone(), tokens);
                gate.open(hub_worker::http::router(state, audit));
            }
            if let Some((_, url)) = &server {
                // Said once every route answers (scripts and tests wait for this line).
                eprintln!("webhook intake on {url}");
            }
            tracing::info!("hub running; Ctrl-C or SIGTERM stops it");
            eprintln!("hub-worker running on {} (Ctrl-C or SIGTERM to stop)", redact_url(&cfg.database.url));
            stop.cancelled().await;
            eprintln!("stopping: finishing requests in flight and claimed batches");
            if let Some((s, _)) = server {
                s.await.context("http server task")?.context("http server")?;
            }
            hub.shutdown().await;
        }
    }
    Ok(())
}

/// The hub the pulled-source commands (`sync`, `state`) work on: the config's database and
/// integrations, checked as `check` does (secrets of front doors aside: no server runs), on an
/// in-process transport whatever the config says, since these commands publish nothing (the
/// stages are not started; a running worker processes the pages stored).
async fn pull_hub(config: &std::path::Path) -> anyhow::Result<hub_worker::Hub> {
    let cfg = Config::load(Some(config))?;
    let files = match cfg.integrations_path() {
        None => Vec::new(),
        Some(dir) => {
            // No front door runs here; targets are built with the hub when deliveries are
            // configured, so their secrets are needed then.
            let secrets = hub_worker::files::Secrets {
                targets: cfg.publish.inbound_queue.is_some(),
                pulls: true,
                ..Default::default()
            };
            let loaded = hub_worker::files::load_dir_with(&dir, secrets);
            if !loaded.diagnostics.is_empty() {
                for d in &loaded.diagnostics {
                    eprintln!("{d}");
                }
                bail!(
                    "{} problem(s) in the integration files (see `hub-worker check`)",
                    loaded.diagnostics.len()
                );
            }
            loaded.integrations
        }
    };
    let transport = std::sync::Arc::new(layer4_dispatch::InProcessTransport::default());
    Ok(cfg.hub_builder(files).await?.transport(transport).build().await?)
}

/// The audit event of a write on a pulled source from the command line, as the API logs it.
fn cli_audit_event(action: &str, source: &str, outcome: &str) {
    tracing::info!(
        target: "audit",
        token = "cli",
        method = "CLI",
        path = action,
        peer = "local",
        outcome,
        scope = "operate",
        what = format!("source {source}").as_str(),
        "{action}"
    );
}

/// A run's report for a terminal.
fn run_report_text(r: &hub_worker::pull::RunReport) -> String {
    let or_none = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "run {} of `{}`: {}{}\n",
        r.run_id,
        r.source,
        r.outcome.as_str(),
        if r.resumed { " (resumed an unfinished listing)" } else { "" }
    );
    out.push_str(&format!(
        "  pages {} ({} stored), records {}, skipped {}, bytes {}\n",
        r.pages, r.pages_stored, r.records, r.skipped, r.bytes
    ));
    out.push_str(&format!("  requests {}, retries {}\n", r.requests, r.retries));
    out.push_str(&format!(
        "  cursor before {}, after {}\n",
        or_none(&r.cursor_before),
        or_none(&r.cursor_after)
    ));
    if let Some(e) = &r.error {
        out.push_str(&format!("  error: {e}\n"));
    }
    if r.pages_stored > 0 {
        out.push_str("  the pages are stored in layer 1: a running worker processes them\n");
    }
    out
}

/// Resolves with the signal's name when the process is asked to stop: Ctrl-C (SIGINT) from a
/// terminal, or SIGTERM, which containers, systemd and most supervisors send (and, unhandled,
/// would kill the process mid-batch with no graceful shutdown). The handlers are installed
/// before this returns, so a signal arriving before the future is first polled still counts.
fn stop_requested() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                eprintln!("cannot listen for Ctrl-C ({e}); stopping");
            }
            "Ctrl-C"
        })
    }
}

/// The URL without its password, for printing.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

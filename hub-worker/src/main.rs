//! `hub-worker`: the post office's command line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use hub_worker::config::Config;
use hub_worker::{demo, report};
use migrations::{Migrator, MigratorTrait};

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
    /// Prints a message's lineage from any layer's id.
    Trace {
        /// A layer 1, 2, 3 or 4 id.
        id: uuid::Uuid,
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs the stages until Ctrl-C.
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("HUB_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
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
        Command::Trace { id, db, json } => {
            let conn = layer1_ingest::db::connect(&db.url()?).await?;
            let l = hub_worker::lineage(&conn, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print!("{}", report::lineage_text(&l));
            }
        }
        Command::Run { config } => {
            let cfg = Config::load(Some(&config))?;
            let hub = cfg.hub_builder().await?.build().await?;
            hub.start();
            tracing::info!("hub running; Ctrl-C stops it");
            eprintln!("hub-worker running on {} (Ctrl-C to stop)", redact_url(&cfg.database.url));
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
            eprintln!("stopping: finishing claimed batches");
            hub.shutdown().await;
        }
    }
    Ok(())
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

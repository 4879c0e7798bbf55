//! The embedding API: build a hub from a database URL, a transport and integrations; ingest;
//! run the stages as tasks; trace; shut down gracefully.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use layer1_ingest::table::count_by_status;
use layer1_ingest::{Direction, Ingested, Layer, NewRaw, Stage, StageSettings, Status, Wakeup, run_stage};
use layer2_normalize::{Normalizer, Normalizers};
use layer3_translate::{TranslateStage, Translator, Translators};
use layer4_dispatch::{
    IntakeConsumer, PublishSettings, PublishStage, ReceiptConsumer, Route, RouteStage, RouteTable, Router,
    Routers, Transport,
};
use migrations::{Migrator, MigratorTrait};

use crate::error::{Error, Result};
use crate::fused::FusedStage;
use crate::lineage::{Lineage, lineage};

/// How the hub runs. Defaults suit a small deployment; every field is a config key of
/// `hub-worker run`.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Batch size, poll interval, retries of the claim-based stages.
    pub stage: StageSettings,
    /// Lease, ack timeout and receipts queue of the publisher.
    pub publish: PublishSettings,
    /// Largest body accepted by `ingest`, in bytes.
    pub max_body_bytes: usize,
    /// Apply pending migrations when the hub is built.
    pub migrate: bool,
    /// Copies of the ingest-side and publish stages run side by side (PostgreSQL only).
    pub stage_tasks: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            stage: StageSettings::default(),
            publish: PublishSettings::default(),
            max_body_bytes: 1024 * 1024,
            migrate: true,
            stage_tasks: 2,
        }
    }
}

/// What a caller knows about a payload besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct IngestMeta {
    /// The third party's event id. When absent, the source's normalizer may find it in the body.
    pub source_ref: Option<String>,
    /// Content type; `application/json` when absent.
    pub content_type: Option<String>,
    /// Request headers worth keeping (secrets are redacted before storing).
    pub headers: Vec<(String, String)>,
}

/// Builds a [`Hub`].
pub struct HubBuilder {
    database_url: String,
    transport: Option<Arc<dyn Transport>>,
    normalizers: Normalizers,
    translators: Translators,
    router: Option<Arc<dyn Router>>,
    /// Routes given one by one (an integration file's, [`HubBuilder::routes`]), one table.
    routes: Vec<Route>,
    /// What `integrations_dir` found wrong, `file:line: error: ...`; `build` refuses on any.
    diagnostics: Vec<String>,
    settings: HubSettings,
    wait: Option<crate::startup::Wait>,
    /// Downstream: the targets and outbound routes (integration files' `[target]` and
    /// `[outbound."<type>"]`, or [`HubBuilder::outbound`]).
    outbound: crate::outbound::Outbound,
    /// What the audit desk masks, per source (integration files' `[payload] redact`).
    redactions: crate::redact::Redactions,
    /// Pulled sources (integration files' `[pull]`, or [`HubBuilder::pull`]).
    pulls: Vec<(crate::pull::PullSettings, Option<crate::pull::Schedule>)>,
}

impl HubBuilder {
    /// Adds a source the hub polls itself: runs on `schedule` (none: only by hand, with
    /// [`Hub::sync_now`]), pages stored in layer 1 and processed like any payload of the
    /// source (its normalizer splits each page into records).
    pub fn pull(
        mut self,
        settings: crate::pull::PullSettings,
        schedule: Option<crate::pull::Schedule>,
    ) -> Self {
        self.pulls.push((settings, schedule));
        self
    }

    /// Records a problem found while setting the hub up (`file:line: error: ...`): `build`
    /// refuses to start with any.
    pub fn problem(mut self, problem: impl Into<String>) -> Self {
        self.diagnostics.push(problem.into());
        self
    }

    /// Adds downstream targets and outbound routes: core messages the hub takes from
    /// `publish.inbound_queue` are translated, built into the target's request, delivered over
    /// HTTP, and answered with a delivery receipt.
    pub fn outbound(mut self, o: crate::outbound::Outbound) -> Self {
        self.outbound.extend(o);
        self
    }

    /// Masks `rules` (a source's `[payload] redact`, [`crate::redact`]) in what the audit desk
    /// shows of `source`'s messages to readers without scope `raw`.
    pub fn redaction(mut self, source: impl Into<String>, rules: crate::redact::SourceRedaction) -> Self {
        self.redactions.insert(source, rules);
        self
    }

    /// Uses this transport (default: a fresh in-process one).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }

    /// Adds a normalizer for its source.
    pub fn normalizer(mut self, n: Arc<dyn Normalizer>) -> Self {
        self.normalizers.insert(n.source().to_owned(), n);
        self
    }

    /// Adds a translator for its (source, record kind).
    pub fn translator(mut self, t: Arc<dyn Translator>) -> Self {
        self.translators.insert((t.source().to_owned(), t.record_kind().to_owned()), t);
        self
    }

    /// Uses this router. Routes added with [`HubBuilder::routes`] or from integration files
    /// are asked as well: a message goes to every destination either names
    /// ([`layer4_dispatch::Routers`]; for a destination both name, the routes' ordering key
    /// applies). Called twice, the second router replaces the first.
    pub fn router(mut self, r: Arc<dyn Router>) -> Self {
        self.router = Some(r);
        self
    }

    /// Adds routing rules. All of them form one [`RouteTable`] (every matching route is a
    /// destination), asked beside the [`HubBuilder::router`] when there is one.
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Adds the integrations declared as files in `dir` (`core.toml` and one TOML file per
    /// source; see `examples/integrations`): each source's normalizer, its translators (one
    /// per record kind) and its `[[routes]]` (scoped to the source, added as with
    /// [`HubBuilder::routes`]). The directory is read and checked now, by the loader
    /// `hub-worker check` and `run` use ([`crate::files::load_dir`]); any problem it finds
    /// makes [`HubBuilder::build`] fail listing every one as `file:line: error: ...`: an
    /// integration with an error is never left out silently.
    ///
    /// `[ingress]` (a source's front door and its webhook secret) serves the worker's HTTP
    /// server only; an embedding has none, so its secrets need not be set. A pulled source's
    /// (`[pull.auth]`) must be: the hub polls wherever it runs (the example below needs
    /// `SHOP_API_TOKEN`, for `examples/integrations/shop.toml`; the tests build it from a copy
    /// that reads the token from a file).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> hub_worker::Result<()> {
    /// use hub_worker::Hub;
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations");
    /// let hub = Hub::builder("sqlite::memory:").integrations_dir(&dir).build().await?;
    /// # hub.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn integrations_dir(mut self, dir: impl AsRef<Path>) -> Self {
        let loaded = crate::files::load_dir(dir.as_ref(), false);
        self.diagnostics.extend(loaded.diagnostics.iter().map(ToString::to_string));
        for i in loaded.integrations {
            self = i.register(self);
        }
        self
    }

    /// Uses these settings.
    pub fn settings(mut self, s: HubSettings) -> Self {
        self.settings = s;
        self
    }

    /// Makes [`HubBuilder::build`] wait for a database or transport that does not answer
    /// (refused or timed-out connections), retrying with backoff until both do or
    /// `wait.cancel` fires, instead of failing at once. `wait.progress` tells a readiness
    /// endpoint what is still missing meanwhile. Without it, `build` fails fast, which is what
    /// an embedding application that handles its own start-up usually wants.
    pub fn wait_for_dependencies(mut self, wait: crate::startup::Wait) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Checks the setup, connects (and migrates, unless told not to), declares the router's
    /// destinations and the receipts queue on the transport. Stages start with [`Hub::start`].
    ///
    /// Refuses with [`Error::Config`], listing every problem, a setup that cannot work: what
    /// [`HubBuilder::integrations_dir`] found wrong; no routes at all; a translator whose source
    /// has no normalizer (its records could never be made); translators with routes that
    /// certainly route nothing (an empty [`RouteTable`]); a translator declaring a core message
    /// type ([`Translator::message_type`]) that no route carries from its source, where the
    /// router can tell ([`Router::carries`]). A hub without translators (a stage test, say) is
    /// not held to the last three.
    ///
    /// Fails at once when the database or the transport cannot be reached, unless
    /// [`HubBuilder::wait_for_dependencies`] asked to wait; then only what waiting cannot
    /// mend fails (a refused login, a missing database, a failed migration), and
    /// [`Error::Stopped`] when told to stop first.
    pub async fn build(self) -> Result<Hub> {
        let router = match (self.router, self.routes.is_empty()) {
            (None, true) => None,
            (None, false) => Some(Arc::new(RouteTable::new(self.routes)) as Arc<dyn Router>),
            (Some(r), true) => Some(r),
            (Some(r), false) => {
                Some(Arc::new(Routers::new(vec![Arc::new(RouteTable::new(self.routes)), r]))
                    as Arc<dyn Router>)
            }
        };
        let downstream_only =
            !self.outbound.routes.is_empty() && self.normalizers.is_empty() && self.translators.is_empty();
        let mut diagnostics = self.diagnostics;
        for (p, _) in &self.pulls {
            if !self.normalizers.contains_key(&p.source) {
                diagnostics.push(format!(
                    "pulled source `{}` has no normalizer: its pages could never be read (HubBuilder::normalizer)",
                    p.source
                ));
            }
        }
        let problems = consistency(
            &diagnostics,
            &self.normalizers,
            &self.translators,
            router.as_deref(),
            downstream_only,
        );
        if !problems.is_empty() {
            return Err(Error::Config(format!(
                "the hub cannot run as set up ({} problem{}):\n{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n")
            )));
        }
        let router = match router {
            Some(r) => r,
            // A hub that only delivers downstream routes nothing upstream.
            None if !self.outbound.routes.is_empty() && self.normalizers.is_empty() => {
                Arc::new(RouteTable::new(Vec::new())) as Arc<dyn Router>
            }
            None => return Err(Error::Config("a hub needs routes".into())),
        };
        let downstream = if self.outbound.routes.is_empty() {
            None
        } else if self.settings.publish.inbound_queue.is_none() {
            // Not an error: an embedding may load integration files for their upstream side
            // only (and then need not hold the targets' secrets).
            tracing::warn!(
                routes = self.outbound.routes.len(),
                "outbound routes are declared but publish.inbound_queue is not set: no core message will arrive, nothing is delivered"
            );
            None
        } else {
            let problems = downstream_problems(&self.outbound);
            if !problems.is_empty() {
                return Err(Error::Config(format!(
                    "the hub cannot deliver downstream as set up:\n{}",
                    problems.join("\n")
                )));
            }
            let mut targets = Vec::new();
            for t in &self.outbound.targets {
                targets.push(t.settings().map_err(|e| Error::Config(format!("target `{}`: {e}", t.name)))?);
            }
            let deliverer = layer1_ingest::deliver::Deliverer::new(targets)?;
            let down = crate::downstream::Downstream {
                outbound: Arc::new(self.outbound),
                receipts_queue: self.settings.publish.delivery_receipts_queue.clone(),
            };
            Some((down, Arc::new(deliverer)))
        };
        let transport: Arc<dyn Transport> = match self.transport {
            Some(t) => t,
            None => Arc::new(layer4_dispatch::InProcessTransport::default()),
        };
        // `hub-receipt-to` carries the physical receipts queue: the core app, in any language,
        // sends to it without knowing the hub's logical names or `[transport.queues]`.
        let receipt_to = transport.address(&self.settings.publish.receipts_queue).map_err(|e| match e {
            layer4_dispatch::TransportError::Invalid(why) => {
                Error::Config(format!("publish.receipts_queue: {why}"))
            }
            other => other.into(),
        })?;
        let mut queues = router.destinations();
        queues.push(self.settings.publish.receipts_queue.clone());
        queues.extend(self.settings.publish.inbound_queue.clone());
        if let Some((down, _)) = &downstream {
            queues.extend(down.receipt_queues());
        }
        let url = &self.database_url;
        let database = || async move { Ok::<_, Error>(layer1_ingest::db::connect(url).await?) };
        let declare = || async {
            for q in &queues {
                transport.ensure_queue(q).await?;
            }
            Ok::<_, Error>(())
        };
        let db = match &self.wait {
            Some(w) => crate::startup::reach(w, database, declare).await?,
            None => {
                let db = database().await?;
                declare().await?;
                db
            }
        };
        // After the wait, not inside it: Ctrl-C may interrupt an attempt to connect, and a
        // migration is better not interrupted half-way.
        if self.settings.migrate {
            Migrator::up(&db, None).await?;
        }
        let wake = Wakes::default();
        let mut pullers = BTreeMap::new();
        for (settings, schedule) in self.pulls {
            let name = settings.source.clone();
            let puller = crate::pull::Puller::new(settings, worker_name(), Some(wake.normalize.clone()))
                .map_err(|e| Error::Config(e.to_string()))?;
            if pullers.insert(name.clone(), (puller, schedule)).is_some() {
                return Err(Error::Config(format!("pulled source `{name}` is declared twice")));
            }
        }
        Ok(Hub {
            inner: Arc::new(Inner {
                pullers,
                db,
                transport,
                normalizers: Arc::new(self.normalizers),
                translators: Arc::new(self.translators),
                router,
                settings: self.settings,
                receipt_to,
                redactions: self.redactions,
                downstream,
                wake,
                cancel: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                runs: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// This process's name in leases and run records: the host (`HOSTNAME`) and the process id.
fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// Every reason a hub so set up cannot work, one line each.
fn consistency(
    diagnostics: &[String],
    normalizers: &Normalizers,
    translators: &Translators,
    router: Option<&dyn Router>,
    downstream_only: bool,
) -> Vec<String> {
    let mut out = diagnostics.to_vec();
    // A hub that only delivers downstream (no sources) needs no upstream routes.
    if router.is_none() && !downstream_only {
        out.push(
            "no routes: give HubBuilder::router, HubBuilder::routes, or an integrations_dir with [[routes]]"
                .into(),
        );
    }
    // Sorted, so that the message reads the same on every run.
    let mut orphans: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (source, kind) in translators.keys() {
        if !normalizers.contains_key(source) {
            orphans.entry(source).or_default().push(kind);
        }
    }
    for (source, mut kinds) in orphans {
        kinds.sort_unstable();
        out.push(format!(
            "source `{source}` has translators (record kinds {}) but no normalizer: its records could \
             never be made (HubBuilder::normalizer)",
            kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let Some(router) = router else { return out };
    if !translators.is_empty() && router.is_empty() {
        out.push(
            "the route table is empty: every translated message would be rejected at layer 4 (add routes)"
                .into(),
        );
        return out;
    }
    let mut unrouted: Vec<String> = translators
        .values()
        .filter_map(|t| {
            let ty = t.message_type()?;
            (router.carries(t.source(), ty) == Some(false)).then(|| {
                format!(
                    "no route carries core message type `{ty}` from source `{}` (record kind `{}`): \
                     every such message would be rejected at layer 4",
                    t.source(),
                    t.record_kind()
                )
            })
        })
        .collect();
    unrouted.sort();
    out.extend(unrouted);
    out
}

/// What makes a downstream setup unable to work: an outbound route to a target not declared.
fn downstream_problems(o: &crate::outbound::Outbound) -> Vec<String> {
    let out: Vec<String> = o
        .routes
        .iter()
        .filter(|r| o.target(&r.target).is_none())
        .map(|r| {
            format!(
                "outbound route for `{}` names target `{}`, which is not declared",
                r.message_type, r.target
            )
        })
        .collect();
    out
}

#[derive(Default)]
struct Wakes {
    normalize: Wakeup,
    translate: Wakeup,
    route: Wakeup,
    publish: Wakeup,
    settled: Wakeup,
    outbound: Wakeup,
    deliver: Wakeup,
    delivery_receipts: Wakeup,
}

struct Inner {
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    normalizers: Arc<Normalizers>,
    translators: Arc<Translators>,
    router: Arc<dyn Router>,
    settings: HubSettings,
    /// The receipts queue's physical address (`hub-receipt-to`).
    receipt_to: String,
    /// What the audit desk masks, per source.
    redactions: crate::redact::Redactions,
    /// The downstream side, when the hub has outbound routes.
    downstream: Option<(crate::downstream::Downstream, Arc<layer1_ingest::deliver::Deliverer>)>,
    /// Pulled sources, by name, with their schedules.
    pullers: BTreeMap<String, (crate::pull::Puller, Option<crate::pull::Schedule>)>,
    wake: Wakes,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Sync runs started in the background ([`Hub::start_sync`]).
    runs: Mutex<Vec<JoinHandle<()>>>,
}

/// A running post office. Cheap to clone; all clones are the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Rows of one layer in one status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StatusCount {
    /// Layer.
    pub layer: Layer,
    /// Integration.
    pub source: String,
    /// Direction.
    pub direction: Direction,
    /// Status.
    pub status: Status,
    /// Rows.
    pub count: i64,
}

impl Hub {
    /// A builder on `database_url` (`sqlite://file.db?mode=rwc`, `sqlite::memory:`,
    /// `postgres://...`). A whole embedding, receiver included: `examples/embed.rs`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> hub_worker::Result<()> {
    /// use std::sync::Arc;
    /// use hub_worker::{Hub, integrations};
    /// use layer4_dispatch::InProcessTransport;
    ///
    /// // The core app keeps the transport: its `Receiver`s consume from the same one.
    /// let transport = Arc::new(InProcessTransport::default());
    /// let builder = Hub::builder("sqlite::memory:")
    ///     .transport(transport.clone())
    ///     .router(Arc::new(integrations::demo_routes()));
    /// // A built-in integration adds its normalizer and translators; `.normalizer(..)` and
    /// // `.translator(..)` add your own.
    /// let hub = integrations::register(builder, "payments").expect("built in").build().await?;
    /// hub.start();
    /// hub.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn builder(database_url: impl Into<String>) -> HubBuilder {
        HubBuilder {
            database_url: database_url.into(),
            transport: None,
            normalizers: HashMap::new(),
            translators: HashMap::new(),
            router: None,
            routes: Vec::new(),
            diagnostics: Vec::new(),
            settings: HubSettings::default(),
            wait: None,
            outbound: crate::outbound::Outbound::default(),
            redactions: crate::redact::Redactions::default(),
            pulls: Vec::new(),
        }
    }

    /// What the audit desk needs of the setup to show a message's content: each source's
    /// redaction rules and the receipts queue named in the published `hub-receipt-to`.
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        crate::audit::AuditConfig {
            redactions: self.inner.redactions.clone(),
            receipts_to: Some(self.inner.receipt_to.clone()),
        }
    }

    /// The database connection (for audit queries).
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The transport.
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.inner.transport.clone()
    }

    /// Stores `body` for `source` in layer 1 (`just_in`) and wakes the normalize stage.
    /// Returns the layer 1 id and what became of the payload ([`layer1_ingest::IngestOutcome`]):
    /// new, a duplicate of the copy on record, a resend of an event whose copies were all
    /// rejected or dead (stored and processed), or a conflict (other bytes under the key of a
    /// copy that stands: stored rejected, not processed).
    ///
    /// A database error is [`layer1_ingest::Error::Db`] when nothing was stored and
    /// [`layer1_ingest::Error::OutcomeUnknown`] when the commit got no answer; retrying is safe
    /// after either.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> hub_worker::Result<()> {
    /// # use std::sync::Arc;
    /// use hub_worker::{Hub, IngestMeta, integrations};
    /// # let b = Hub::builder("sqlite::memory:").router(Arc::new(integrations::demo_routes()));
    /// # let hub = integrations::register(b, "payments").expect("built in").build().await?;
    /// let body = br#"{"id":"evt_1","type":"payment.succeeded"}"#;
    /// let meta = IngestMeta { source_ref: Some("evt_1".into()), ..IngestMeta::default() };
    /// let first = hub.ingest("payments", body, meta.clone()).await?;
    /// // The same event again (a webhook retried): nothing new stored, the same id.
    /// let again = hub.ingest("payments", body, meta).await?;
    /// assert!(again.is_duplicate() && again.id == first.id);
    /// # Ok(()) }
    /// ```
    pub async fn ingest(&self, source: &str, body: &[u8], meta: IngestMeta) -> Result<Ingested> {
        self.ingest_batch(source, &[(body, meta)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Db(sea_orm::DbErr::Custom("ingest gave no answer".into()))))
    }

    /// [`Hub::ingest`] for many payloads of one source, in one transaction: one multi-row INSERT
    /// per 500 payloads. Each payload gets its own answer; the outer error is the database's
    /// (for the whole batch) or an unknown source.
    pub async fn ingest_batch(
        &self,
        source: &str,
        items: &[(&[u8], IngestMeta)],
    ) -> Result<Vec<Result<Ingested>>> {
        let normalizer =
            self.inner.normalizers.get(source).ok_or_else(|| Error::UnknownSource(source.to_owned()))?;
        let refs: Vec<Option<String>> = items
            .iter()
            .map(|(body, meta)| meta.source_ref.clone().or_else(|| normalizer.event_ref(body)))
            .collect();
        let raws: Vec<NewRaw<'_>> = items
            .iter()
            .zip(&refs)
            .map(|((body, meta), source_ref)| NewRaw {
                source,
                source_ref: source_ref.as_deref(),
                body,
                content_type: meta.content_type.as_deref().unwrap_or("application/json"),
                headers: &meta.headers,
                direction: Direction::Upstream,
            })
            .collect();
        let answers =
            layer1_ingest::ingest_many(&self.inner.db, &raws, self.inner.settings.max_body_bytes).await?;
        // New rows and resends are `just_in`; duplicates and conflicts give the stages nothing.
        if answers.iter().any(|a| {
            matches!(a, Ok(i) if matches!(i.outcome, layer1_ingest::IngestOutcome::New | layer1_ingest::IngestOutcome::Resend { .. }))
        }) {
            self.inner.wake.normalize.wake();
        }
        Ok(answers.into_iter().map(|a| a.map_err(Error::from)).collect())
    }

    /// Starts the stages and the receipt consumer as tasks. Calling it twice does nothing more.
    pub fn start(&self) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        let i = &self.inner;
        let s = &i.settings;
        // Copies of the busy stages run side by side on PostgreSQL (SKIP LOCKED gives each its
        // own rows), so one batch's database round trips overlap another's work. SQLite has one
        // connection: one copy.
        let copies = if layer1_ingest::db::is_sqlite(&i.db) { 1 } else { s.stage_tasks.max(1) };
        // (stage, its wake-up, whom it wakes, copies)
        type Spec = (Arc<dyn Stage>, Wakeup, Vec<Wakeup>, usize);
        let (handoff_tx, handoff_rx) = layer4_dispatch::publish::handoff(4 * copies);
        let handoff_rx = Arc::new(Mutex::new(handoff_rx));
        let stages: Vec<Spec> = vec![
            (
                // Layer 1 -> 2 (-> 3 -> 4 when all goes straight through) in one write
                // transaction, the integrations run before it under a lease.
                Arc::new(
                    FusedStage::new(
                        i.db.clone(),
                        i.normalizers.clone(),
                        i.translators.clone(),
                        i.router.clone(),
                        s.stage.clone(),
                    )
                    .with_handoff(handoff_tx, s.publish.lease),
                ),
                i.wake.normalize.clone(),
                vec![
                    i.wake.translate.clone(),
                    i.wake.route.clone(),
                    i.wake.publish.clone(),
                    i.wake.settled.clone(),
                ],
                copies,
            ),
            (
                Arc::new(TranslateStage::new(i.db.clone(), i.translators.clone(), s.stage.clone())),
                i.wake.translate.clone(),
                vec![i.wake.route.clone(), i.wake.settled.clone()],
                1,
            ),
            (
                Arc::new(RouteStage::new(i.db.clone(), i.router.clone(), s.stage.clone())),
                i.wake.route.clone(),
                vec![i.wake.publish.clone(), i.wake.settled.clone()],
                1,
            ),
            (
                Arc::new(
                    PublishStage::new(
                        i.db.clone(),
                        i.transport.clone(),
                        s.stage.clone(),
                        PublishSettings { receipts_queue: i.receipt_to.clone(), ..s.publish.clone() },
                    )
                    .with_handoff(handoff_rx),
                ),
                i.wake.publish.clone(),
                vec![i.wake.settled.clone()],
                copies,
            ),
        ];
        let mut stages = stages;
        if let Some((down, deliverer)) = &i.downstream {
            let w = &i.wake;
            stages.push((
                Arc::new(crate::downstream::OutboundStage::new(i.db.clone(), down.clone(), s.stage.clone())),
                w.outbound.clone(),
                vec![w.deliver.clone(), w.delivery_receipts.clone(), w.settled.clone()],
                copies,
            ));
            stages.push((
                Arc::new(crate::downstream::DeliverStage::new(
                    i.db.clone(),
                    down.clone(),
                    deliverer.clone(),
                    s.stage.clone(),
                )),
                w.deliver.clone(),
                vec![w.delivery_receipts.clone(), w.settled.clone()],
                copies,
            ));
            stages.push((
                Arc::new(layer4_dispatch::delivery_receipts::ReceiptSender::new(
                    i.db.clone(),
                    i.transport.clone(),
                    s.stage.clone(),
                    s.publish.lease,
                )),
                w.delivery_receipts.clone(),
                vec![w.settled.clone()],
                1,
            ));
        }
        for (stage, wake, downstream, n) in stages {
            for _ in 0..n {
                tasks.push(tokio::spawn(run_stage(
                    stage.clone(),
                    s.stage.clone(),
                    wake.clone(),
                    downstream.clone(),
                    i.cancel.child_token(),
                )));
            }
        }
        let receipts = ReceiptConsumer::new(
            i.db.clone(),
            i.transport.clone(),
            s.publish.receipts_queue.clone(),
            usize::try_from(s.stage.batch_size).unwrap_or(200),
            i.wake.settled.clone(),
        );
        tasks.push(tokio::spawn(receipts.run(i.cancel.child_token())));
        if let Some(q) = &s.publish.inbound_queue {
            let intake = IntakeConsumer::new(
                i.db.clone(),
                i.transport.clone(),
                q.clone(),
                usize::try_from(s.stage.batch_size).unwrap_or(200),
            )
            .waking(i.wake.outbound.clone());
            tasks.push(tokio::spawn(intake.run(i.cancel.child_token())));
        }
        if !layer1_ingest::db::is_sqlite(&i.db) {
            tasks.push(tokio::spawn(fold_counts(i.db.clone(), i.cancel.child_token())));
        }
        for (puller, schedule) in i.pullers.values() {
            if let Some(schedule) = schedule {
                tasks.push(tokio::spawn(crate::pull::scheduled(
                    puller.clone(),
                    schedule.clone(),
                    i.db.clone(),
                    i.cancel.child_token(),
                )));
            }
        }
    }

    /// The pulled sources: name, schedule (expression and zone) and settings.
    pub fn pulled_sources(&self) -> Vec<(&str, Option<&crate::pull::Schedule>, &crate::pull::PullSettings)> {
        self.inner.pullers.iter().map(|(n, (p, s))| (n.as_str(), s.as_ref(), p.settings())).collect()
    }

    fn puller(&self, source: &str) -> Result<&crate::pull::Puller> {
        self.inner.pullers.get(source).map(|(p, _)| p).ok_or_else(|| Error::NotPulled(source.to_owned()))
    }

    /// Runs `source` once, now, to the end of its listing (or its page bound, or an error, which
    /// the report carries and `sync_runs` keeps). [`Error::Conflict`] when a run of the source
    /// is under way on any worker.
    pub async fn sync_now(
        &self,
        source: &str,
        trigger: crate::pull::Trigger,
    ) -> Result<crate::pull::RunReport> {
        let run = self.begin_sync(source, trigger).await?;
        Ok(run.finish(&self.inner.cancel.child_token()).await?)
    }

    /// Starts a run of `source` in the background and answers its id at once, once the run
    /// holds the source; the run's progress and end are in `sync_runs` ([`Hub::sync_run`]).
    pub async fn start_sync(&self, source: &str, trigger: crate::pull::Trigger) -> Result<Uuid> {
        let run = self.begin_sync(source, trigger).await?;
        let id = run.id();
        let stop = self.inner.cancel.child_token();
        let task = tokio::spawn(async move {
            if let Err(e) = run.finish(&stop).await {
                tracing::error!(run = %id, error = %e, "sync run could not record its end");
            }
        });
        // Apart from the stages' tasks (`start` does nothing when those exist); finished runs'
        // handles are dropped as new ones come.
        let mut runs = self.inner.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.retain(|t| !t.is_finished());
        runs.push(task);
        Ok(id)
    }

    async fn begin_sync(
        &self,
        source: &str,
        trigger: crate::pull::Trigger,
    ) -> Result<Box<layer1_ingest::pull::run::Run>> {
        match self.puller(source)?.start(&self.inner.db, trigger).await? {
            layer1_ingest::pull::run::Started::Run(run) => Ok(run),
            layer1_ingest::pull::run::Started::Busy { holder, until } => Err(Error::Conflict(format!(
                "source `{source}` is being synced by {holder}{}: one run at a time",
                until.map(|u| format!(" (lease until {})", u.to_rfc3339())).unwrap_or_default()
            ))),
        }
    }

    /// The saved state of a pulled source (none before its first run).
    pub async fn pull_state(&self, source: &str) -> Result<Option<layer1_ingest::pull::store::state::Model>> {
        self.puller(source)?;
        Ok(layer1_ingest::pull::store::load(&self.inner.db, source).await?)
    }

    /// Forgets a pulled source's cursor, unfinished listing and taken records: the next run
    /// reads everything. [`Error::Conflict`] while a run holds the source.
    pub async fn reset_pull_state(&self, source: &str) -> Result<()> {
        self.puller(source)?;
        layer1_ingest::pull::store::reset(&self.inner.db, source, chrono::Utc::now()).await.map_err(|e| {
            match e {
                layer1_ingest::Error::InvalidInput(m) => Error::Conflict(m),
                other => other.into(),
            }
        })?;
        Ok(())
    }

    /// A pulled source's runs, newest first (`before`: a run id, to page on).
    pub async fn sync_runs(
        &self,
        source: &str,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<layer1_ingest::pull::store::runs::Model>> {
        self.puller(source)?;
        Ok(layer1_ingest::pull::store::recent_runs(&self.inner.db, source, before, limit).await?)
    }

    /// One run, by id.
    pub async fn sync_run(&self, id: Uuid) -> Result<layer1_ingest::pull::store::runs::Model> {
        layer1_ingest::pull::store::run(&self.inner.db, id).await?.ok_or(Error::NotFound(id))
    }

    /// Stops the stages: each finishes the batch it holds (committing it) and claims no more.
    /// Rows not yet claimed stay where they are for the next start.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let mut tasks: Vec<_> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.extend(std::mem::take(&mut *self.inner.runs.lock().unwrap_or_else(|p| p.into_inner())));
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "stage task ended abnormally");
            }
        }
    }

    /// Aborts every stage task and sync run at once, mid-batch if need be: what a crash does. Uncommitted
    /// writes roll back; rows claimed but not yet written stay leased until
    /// [`StageSettings::lease`] ends, then any worker takes them. For tests of crash safety;
    /// use [`Hub::shutdown`] otherwise.
    pub fn abort(&self) {
        let mut tasks: Vec<_> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.extend(std::mem::take(&mut *self.inner.runs.lock().unwrap_or_else(|p| p.into_inner())));
        for t in tasks {
            t.abort();
        }
    }

    /// Wakes every stage (after a replay, say).
    pub fn wake(&self) {
        let w = &self.inner.wake;
        for x in
            [&w.normalize, &w.translate, &w.route, &w.publish, &w.outbound, &w.deliver, &w.delivery_receipts]
        {
            x.wake();
        }
    }

    /// Whether the transport answers: it can declare the receipts queue.
    pub async fn transport_ready(&self) -> Result<()> {
        Ok(self.inner.transport.ensure_queue(&self.inner.settings.publish.receipts_queue).await?)
    }

    /// The whole chain of the message `id` names, from any layer's id (typed or a bare UUID).
    pub async fn lineage(&self, id: impl Into<Uuid>) -> Result<Lineage> {
        lineage(&self.inner.db, id.into()).await
    }

    /// Row counts per layer, source, direction and status.
    pub async fn counts(&self) -> Result<Vec<StatusCount>> {
        counts(&self.inner.db).await
    }

    /// Waits until no row in any layer is still in progress (every row final), or `timeout`
    /// passes. Returns whether everything settled.
    pub async fn wait_settled(&self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A few index probes, not a count of every table: bounded however many rows the
            // tables hold (they are never purged).
            if !crate::summary::anything_open(&self.inner.db).await? {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let _ = tokio::time::timeout(
                (deadline - now).min(Duration::from_millis(100)),
                self.inner.wake.settled.woken(),
            )
            .await;
        }
    }
}

/// Folds the status counts' deltas every second while the hub runs (PostgreSQL): every writing
/// statement appends one or two, and unfolded they would pile up between scrapes. A failed
/// fold loses nothing (the deltas stay); it is logged and tried again.
async fn fold_counts(db: DatabaseConnection, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = crate::summary::fold(&db).await {
            tracing::warn!(error = %e, "folding the status counts failed; retrying");
        }
    }
}

/// Row counts per layer, source, direction and status, on any connection.
///
/// Read from the `status_counts` summary (see [`crate::summary`]): a few hundred rows at most,
/// however large the tables. Folds the pending deltas first (PostgreSQL), so that they stay few
/// even when no hub runs the periodic fold; the numbers are exact either way.
pub async fn counts<C: sea_orm::ConnectionTrait>(db: &C) -> Result<Vec<StatusCount>> {
    crate::summary::fold(db).await?;
    Ok(counts_from(&crate::summary::read(db).await?))
}

/// [`StatusCount`]s from the summary's rows (summed over layer 4's destinations).
pub fn counts_from(rows: &[crate::summary::SummaryRow]) -> Vec<StatusCount> {
    // `Direction` has no order; `true` stands for upstream in the key.
    let mut totals: BTreeMap<(Layer, &str, Status, bool), i64> = BTreeMap::new();
    for r in rows {
        *totals
            .entry((r.layer, r.source.as_str(), r.status, r.direction == Direction::Upstream))
            .or_default() += r.count;
    }
    let mut out: Vec<StatusCount> = totals
        .into_iter()
        .filter(|(_, count)| *count != 0)
        .map(|((layer, source, status, up), count)| StatusCount {
            layer,
            source: source.to_owned(),
            direction: if up { Direction::Upstream } else { Direction::Downstream },
            status,
            count,
        })
        .collect();
    out.sort_by(|a, b| (a.layer, &a.source, a.status).cmp(&(b.layer, &b.source, b.status)));
    out
}

/// [`counts`] the old way: a `GROUP BY` over each whole layer table. Its cost grows with the
/// tables; kept to check the summary against (tests) and to measure the difference
/// (`hub-worker bench-queries`).
pub async fn counts_by_scan<C: sea_orm::ConnectionTrait>(db: &C) -> Result<Vec<StatusCount>> {
    use layer1_ingest::entity as l1;
    use layer2_normalize::entity as l2;
    use layer3_translate::entity as l3;
    use layer4_dispatch::entity as l4;
    let mut out = Vec::new();
    let per_layer = [
        (Layer::Raw, count_by_status::<l1::Entity, C>(db).await?),
        (Layer::Normalized, count_by_status::<l2::Entity, C>(db).await?),
        (Layer::Translated, count_by_status::<l3::Entity, C>(db).await?),
        (Layer::Dispatch, count_by_status::<l4::Entity, C>(db).await?),
    ];
    for (layer, rows) in per_layer {
        out.extend(rows.into_iter().map(|(source, direction, status, count)| StatusCount {
            layer,
            source,
            direction,
            status,
            count,
        }));
    }
    out.sort_by(|a, b| (a.layer, &a.source, a.status).cmp(&(b.layer, &b.source, b.status)));
    Ok(out)
}

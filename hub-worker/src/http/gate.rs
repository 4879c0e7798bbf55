//! The server's front while the hub starts.
//!
//! `hub-worker run` listens before the database and the transport answer, so that
//! `/healthz` says the process is alive and `/readyz` says what it is waiting for (an
//! orchestrator keeps traffic away meanwhile instead of restarting a worker that would only
//! wait again). Every other request gets 503 with `Retry-After` until [`Gate::open`] hands
//! over to the real routes; from then on every request goes to them.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use super::problem::Problem;
use crate::startup::{Dependency, Progress};

/// The routes of a hub that may not be built yet. Cheap to clone; all clones are the same.
#[derive(Clone)]
pub struct Gate {
    app: Arc<OnceLock<Router>>,
    progress: Progress,
}

impl Gate {
    /// A closed gate reporting `progress`.
    pub fn new(progress: Progress) -> Self {
        Self { app: Arc::new(OnceLock::new()), progress }
    }

    /// From now on every request goes to `app`. Opening twice keeps the first.
    pub fn open(&self, app: Router) {
        let _ = self.app.set(app);
    }

    /// The router to serve: the gate in front of whatever [`Gate::open`] is given.
    pub fn router(&self) -> Router {
        Router::new().fallback(gate).with_state(self.clone())
    }
}

async fn gate(State(g): State<Gate>, req: Request) -> Response {
    if let Some(app) = g.app.get() {
        // A Router's error type is Infallible: every outcome is a response.
        return match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let missing: Vec<&str> = g.progress.missing().into_iter().map(Dependency::name).collect();
    // Names only, as `/readyz` does later: the endpoint is open, and errors name hosts.
    let waiting = if missing.is_empty() {
        "starting the stages".to_owned()
    } else {
        format!("waiting for the {}", missing.join(" and the "))
    };
    match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok").into_response(),
        "/readyz" => Problem::unavailable("not-ready", "Not ready", format!("starting: {waiting}"), None)
            .into_response(),
        _ => Problem::unavailable(
            "starting",
            "Starting",
            format!("the hub is starting ({waiting}); retry later"),
            Some(5),
        )
        .into_response(),
    }
}

//! `jepsen-lite ui`: the playground, a live web page of a local cluster to watch it and break it.
//!
//! One page (`ui/page.html`, embedded in the binary: HTML, CSS and a small script, nothing fetched from
//! elsewhere) and three endpoints: `GET /` the page, `GET /api/events` the live picture as server-sent events
//! (one JSON snapshot each time it changes, [`dashboard`]), `POST /api/action` one action ([`actions`]). The
//! cluster is the playground's own or the one `scripts/cluster.sh` started ([`backend`]). The page can kill
//! processes, so the server answers only requests addressed to it by the name it listens on: a request whose
//! `Host` (or `Origin`, when there is one) names another site is refused, which keeps other web pages open in
//! the same browser from driving it (DNS rebinding, cross-site form posts).

pub mod actions;
pub mod backend;
pub mod dashboard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::IntoFuture as _;
use tokio::sync::watch;

use backend::Backend;
use dashboard::Dashboard;

/// The page.
const PAGE: &str = include_str!("ui/page.html");
/// How long connections may take to finish once the playground stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest request body an action may have.
pub const ACTION_BODY_BYTES_MAX: usize = 16 * 1024;

struct Shared {
    backend: Arc<Backend>,
    dashboard: Arc<Dashboard>,
    /// Set when the playground stops: ends every event stream, so that the server's graceful shutdown does not
    /// wait on pages left open.
    stop: watch::Receiver<bool>,
    /// The `Host` values this server answers to (`127.0.0.1:7080`, `localhost:7080`).
    hosts: Vec<String>,
}

/// The `Host` values a server bound to `addr` answers to.
pub fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{}", addr.port()));
    }
    hosts
}

/// Why a request is refused, or `None` if its `Host` and `Origin` name this server.
pub fn refusal(headers: &HeaderMap, hosts: &[String]) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let Some(host) = host.filter(|host| hosts.iter().any(|allowed| allowed == host)) else {
        return Some(format!(
            "refused: this playground answers only requests addressed to http://{} (the request named {:?}); open that address",
            hosts[0],
            host.unwrap_or("no host")
        ));
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = hosts
            .iter()
            .any(|allowed| origin == format!("http://{allowed}"));
        if !own {
            return Some(format!(
                "refused: a page from {origin:?} may not drive this playground (only its own page at http://{host} may)"
            ));
        }
    }
    None
}

async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match refusal(request.headers(), &shared.hosts) {
        Some(reason) => (StatusCode::FORBIDDEN, reason).into_response(),
        None => next.run(request).await,
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let receiver = shared.dashboard.subscribe();
    let stop = shared.stop.clone();
    let stream = futures::stream::unfold((receiver, stop), |(mut receiver, mut stop)| async move {
        tokio::select! {
            changed = receiver.changed() => changed.ok()?,
            _ = stop.wait_for(|stopped| *stopped) => return None,
        }
        let json = receiver.borrow_and_update().clone();
        Some((
            Ok(Event::default().event("snapshot").data(json)),
            (receiver, stop),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn action(State(shared): State<Arc<Shared>>, body: String) -> Response {
    if body.len() > ACTION_BODY_BYTES_MAX {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is {} bytes; an action takes at most {ACTION_BODY_BYTES_MAX}",
                body.len()
            ),
        )
            .into_response();
    }
    match actions::parse(&body) {
        Ok(action) => {
            let answer = actions::perform(action, &shared.backend, &shared.dashboard).await;
            axum::Json(answer).into_response()
        }
        Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

/// Serves the playground for `backend` on `listener` until `stop` is set, with the poller and the probe
/// running; then stops them (the backend is the caller's to shut down).
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<Backend>,
    mode: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the listener has no address")?;
    let dashboard = Dashboard::new(&mode);
    dashboard.event(
        "process",
        format!(
            "playground started on {} nodes ({mode})",
            backend.nodes().len()
        ),
    );
    let (halt, halted) = watch::channel(false);
    let poller = tokio::spawn(dashboard::run_poller(
        Arc::clone(&dashboard),
        Arc::clone(&backend),
        halted.clone(),
    ));
    let probe = tokio::spawn(dashboard::run_probe(
        Arc::clone(&dashboard),
        Arc::clone(&backend),
        halted,
    ));
    let shared = Arc::new(Shared {
        backend,
        dashboard,
        stop: stop.clone(),
        hosts: allowed_hosts(addr),
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/api/events", get(events))
        .route("/api/action", post(action))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared);
    let mut stopped = stop.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .into_future();
    // Once stopping, connections get `SHUTDOWN_GRACE` to finish (event streams end at once).
    let served = tokio::select! {
        served = server => served.context("the playground's web server failed"),
        () = async {
            let _ = stopped.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    let _ = halt.send(true);
    let _ = poller.await;
    let _ = probe.await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_requests_addressed_to_the_playground_pass() {
        let hosts = allowed_hosts("127.0.0.1:7080".parse().unwrap());
        assert_eq!(hosts, vec!["127.0.0.1:7080", "localhost:7080"]);
        assert!(refusal(&headers(Some("127.0.0.1:7080"), None), &hosts).is_none());
        assert!(refusal(
            &headers(Some("localhost:7080"), Some("http://localhost:7080")),
            &hosts
        )
        .is_none());
        // DNS rebinding: another name that resolves here.
        let rebound = refusal(&headers(Some("evil.example:7080"), None), &hosts).unwrap();
        assert!(rebound.contains("http://127.0.0.1:7080"), "{rebound}");
        assert!(refusal(&headers(None, None), &hosts).is_some());
        // A cross-site post from another page in the same browser.
        let cross = refusal(
            &headers(Some("127.0.0.1:7080"), Some("http://evil.example")),
            &hosts,
        )
        .unwrap();
        assert!(cross.contains("evil.example"), "{cross}");
        assert!(refusal(
            &headers(Some("127.0.0.1:7080"), Some("http://127.0.0.1:7081")),
            &hosts
        )
        .is_some());
    }
}

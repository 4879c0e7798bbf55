//! A scripted HTTP/1.1 server for delivery tests, written on a bare `TcpListener` so that it
//! shares no code with the hub (an HTTP bug on both sides would cancel out).
//!
//! Each path has a script: a queue of [`Reply`]s consumed in order, the last one repeating.
//! Every request is recorded (method, path and query, lowercase headers, body, arrival time).
//! It speaks what a client needs: request line, headers, a Content-Length or chunked body,
//! keep-alive, and `Connection: close` honoured. It can play an OAuth2 token endpoint with
//! [`Reply::token`].
//!
//! ```ignore
//! let server = ScriptedServer::start().await;
//! server.script("/contacts", vec![Reply::status(500), Reply::json(201, r#"{"id":7}"#)]);
//! // ... deliver to server.url() ...
//! assert_eq!(server.requests("/contacts").len(), 2);
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A request line plus headers larger than this is refused (closes the connection).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Answer at once. A Content-Length is added unless the headers have one.
    Status { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Wait `delay` (the request counts as in flight), then answer `then`.
    Slow { delay: Duration, then: Box<Reply> },
    /// Close the connection without answering, with SO_LINGER 0 so the client sees a reset.
    Reset,
}

impl Reply {
    /// A status with an empty body.
    pub(crate) fn status(status: u16) -> Reply {
        Reply::Status { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A status with a JSON body.
    pub(crate) fn json(status: u16, body: &str) -> Reply {
        Reply::Status {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// A status with a body of raw bytes.
    pub(crate) fn bytes(status: u16, body: Vec<u8>) -> Reply {
        Reply::Status { status, headers: Vec::new(), body }
    }

    /// An OAuth2 token response (RFC 6749 5.1).
    pub(crate) fn token(access_token: &str, expires_in: u64) -> Reply {
        Reply::json(
            200,
            &format!(
                r#"{{"access_token":"{access_token}","expires_in":{expires_in},"token_type":"Bearer"}}"#
            ),
        )
    }

    /// `then` after `delay`.
    pub(crate) fn slow(delay: Duration, then: Reply) -> Reply {
        Reply::Slow { delay, then: Box::new(then) }
    }

    /// The same reply with one more header (on the final answer of a `Slow`; none on `Reset`).
    pub(crate) fn header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Status { status, mut headers, body } => {
                headers.push((name.to_owned(), value.to_owned()));
                Reply::Status { status, headers, body }
            }
            Reply::Slow { delay, then } => Reply::Slow { delay, then: Box::new(then.header(name, value)) },
            Reply::Reset => Reply::Reset,
        }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) path: String,
    /// Names lowercase, in the order received.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// When the whole request had been read.
    pub(crate) at: Instant,
}

impl Recorded {
    /// The first header of that name (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct State {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections: AtomicUsize,
}

/// The server; stops (with all its connections) when dropped.
pub(crate) struct ScriptedServer {
    pub(crate) addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it ends them all.
        self.accept.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The path without the query: what scripts are keyed by.
fn path_only(path_and_query: &str) -> &str {
    path_and_query.split_once('?').map_or(path_and_query, |(path, _)| path)
}

impl ScriptedServer {
    /// Listens on a free port of 127.0.0.1.
    pub(crate) async fn start() -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        shared.connections.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(serve(stream, shared.clone()));
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        ScriptedServer { addr, state, accept }
    }

    /// "http://127.0.0.1:<port>", no trailing slash.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the script of `path` (without query). Paths with no script answer 404.
    pub(crate) fn script(&self, path: &str, replies: Vec<Reply>) {
        lock(&self.state.scripts).insert(path.to_owned(), replies.into());
    }

    /// The requests received on `path` (query ignored), in arrival order.
    pub(crate) fn requests(&self, path: &str) -> Vec<Recorded> {
        lock(&self.state.requests).iter().filter(|r| path_only(&r.path) == path).cloned().collect()
    }

    /// Every request received, in arrival order.
    pub(crate) fn all_requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The most requests that were being answered at the same time (read, not yet answered).
    pub(crate) fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn next_reply(state: &State, path: &str) -> Reply {
        let mut scripts = lock(&state.scripts);
        match scripts.get_mut(path_only(path)) {
            Some(queue) if queue.len() > 1 => queue.pop_front().unwrap_or(Reply::status(500)),
            Some(queue) => queue.front().cloned().unwrap_or(Reply::status(500)),
            None => Reply::bytes(404, format!("no script for {path}").into_bytes()),
        }
    }
}

/// One connection: requests one after the other (keep-alive) until the client closes, asks to
/// close, or a reply resets.
async fn serve(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut conn).await else { return };
        let close = request.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = ScriptedServer::next_reply(&state, &request.path);
        lock(&state.requests).push(request);
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let keep_open = respond(&mut conn, reply, close).await;
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep_open {
            return;
        }
    }
}

/// Reads one request; None at end of stream or on anything malformed.
async fn read_request(conn: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut head_bytes = 0;
    let mut line = String::new();
    // RFC 9112 2.2: empty lines before the request line are ignored.
    while line.trim_end().is_empty() {
        line.clear();
        head_bytes += conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        if head_bytes > MAX_HEAD_BYTES {
            return None;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        head_bytes += conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        if head_bytes > MAX_HEAD_BYTES {
            return None;
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        read_chunked(conn).await?
    } else {
        let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.ok()?;
        body
    };
    Some(Recorded { method, path, headers, body, at: Instant::now() })
}

/// A chunked body (RFC 9112 7.1), trailers skipped.
async fn read_chunked<R: AsyncRead + Unpin>(conn: &mut BufReader<R>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let size_text = line.trim_end().split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
                if line.trim_end().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).await.ok()?;
        let mut crlf = [0; 2];
        conn.read_exact(&mut crlf).await.ok()?;
    }
}

/// Writes `reply`; returns whether the connection stays open.
async fn respond(conn: &mut BufReader<TcpStream>, mut reply: Reply, close: bool) -> bool {
    loop {
        match reply {
            Reply::Slow { delay, then } => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Reset => {
                // SO_LINGER 0: dropping the socket sends RST instead of FIN.
                let _ = conn.get_ref().set_zero_linger();
                return false;
            }
            Reply::Status { status, headers, body } => {
                let reason = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Scripted");
                let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
                for (name, value) in &headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
                    head.push_str(&format!("content-length: {}\r\n", body.len()));
                }
                if close {
                    head.push_str("connection: close\r\n");
                }
                head.push_str("\r\n");
                let stream = conn.get_mut();
                if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err()
                {
                    return false;
                }
                let _ = stream.flush().await;
                return !close;
            }
        }
    }
}

/// The server itself, tested against a raw socket: keep-alive, chunked bodies, the script
/// queue, Connection: close, and reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_server_speaks_enough_http() {
    let server = ScriptedServer::start().await;
    server.script(
        "/a",
        vec![Reply::status(500), Reply::json(201, r#"{"ok":true}"#).header("x-request-id", "r1")],
    );
    server.script("/reset", vec![Reply::Reset]);
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    let requests = concat!(
        "POST /a?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Mixed-Case: v\r\n\r\nhello",
        "PUT /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    socket.write_all(requests.as_bytes()).await.expect("write");
    let mut answers = String::new();
    socket.read_to_string(&mut answers).await.expect("read until the server closes");
    assert_eq!(answers.matches("HTTP/1.1 ").count(), 3, "{answers}");
    assert!(answers.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 201 Created").count(), 2, "the last reply repeats: {answers}");
    assert!(answers.contains("x-request-id: r1") && answers.contains("connection: close"), "{answers}");
    assert_eq!(server.connections(), 1, "one keep-alive connection");

    let seen = server.requests("/a");
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/a?q=1"));
    assert_eq!(seen[0].body_text(), "hello");
    assert_eq!(seen[0].header("x-mixed-case"), Some("v"));
    assert_eq!(seen[1].body_text(), "abcde");
    assert!(seen[1].at <= seen[2].at);
    assert_eq!(server.all_requests().len(), 3);

    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket.write_all(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let read = socket.read_to_end(&mut rest).await;
    assert!(read.is_err() || rest.is_empty(), "no answer on a reset: {read:?} {rest:?}");
    assert_eq!(server.requests("/reset").len(), 1);

    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket.write_all(b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(server.max_in_flight(), 1);
}

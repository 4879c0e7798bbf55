//! HTTPS for deployments without a TLS-terminating proxy in front: `[http] tls_cert` and
//! `tls_key` (PEM files, read once at start).
//!
//! rustls with the aws-lc-rs provider, chosen explicitly: the workspace already builds both
//! aws-lc-rs (the AWS SDK) and ring (lapin, sqlx), so rustls cannot pick a process default on
//! its own. With the `sqs` feature that adds no crypto library to the build; without it, this
//! provider brings aws-lc-rs (and the C library aws-lc-sys) in, which is why this module is the
//! cargo feature `tls` (on by default for the worker, off for an embedder who turns the defaults
//! off). Handshakes run in tasks of
//! their own, bounded in time, so a slow or silent client cannot hold up the accept loop; the
//! connections they yield are served by `axum::serve`, graceful shutdown included.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1) and
/// builds the server's TLS configuration. Errors name the file and the config key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::Config(format!("http.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "http.tls_cert {}: no certificate in the file (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::Config(format!(
            "http.tls_key {}: {e} (expected a PEM private key: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("http TLS: {e}")))?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate.
        .with_single_cert(certs, private)
        .map_err(|e| {
            Error::Config(format!(
                "http.tls_cert {} with http.tls_key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    // The server speaks HTTP/1.1 only (axum is built without http2).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 1024;

/// A listener yielding connections whose TLS handshake is done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_loop: JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp`, handshaking with `config`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        // A few handshaken connections may wait for `accept`; more wait in their tasks.
        let (tx, ready) = mpsc::channel(64);
        // Handshakes in progress are bounded: a flood of clients that connect and stay silent
        // waits in the kernel's backlog instead of holding a task and a socket each.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin (as
                        // axum::serve does for plain connections).
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // Plain HTTP sent to the HTTPS port ends here: the client sees the
                        // connection closed. Debug level: scanners do this all day.
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local, accept_loop })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The server stopped accepting (graceful shutdown): so does the port.
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop holds a sender until it is aborted, which only `drop` does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

//! `ssl://` (`stomp+ssl://`) connections: the rustls client configuration built from
//! [`TlsOptions`] (ring provider), and the plain-or-TLS socket the driver runs on.
//!
//! The driver writes with cancel-safe `write` calls and treats `Ok(n)` as "these bytes are on
//! their way". A TLS write can leave encrypted records inside rustls when the socket is full,
//! and nothing would flush them while the driver has nothing more to write. So the TLS write
//! half reports a write only once rustls has flushed it to the socket: a write that is still
//! flushing returns `Pending` and remembers how many bytes it took; the next call (the driver
//! retries with the same buffer, grown only at its end) completes the flush and reports them.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;
use crate::options::TlsOptions;

/// Environment variable naming the CA file to trust when [`TlsOptions::ca_file`] is unset.
pub(crate) const CA_ENV: &str = "FABRIC_TLS_CA";
/// The system CA bundle (Debian's `ca-certificates`), trusted when no CA file is configured.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn tls_error(message: String) -> ClientError {
    ClientError::Tls { message }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| tls_error(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let data = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{what} {}: unparsable PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{what} {}: no CERTIFICATE in this PEM file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The CA file to trust: the option, else `FABRIC_TLS_CA`, else the system bundle.
fn ca_path(opts: &TlsOptions) -> Result<PathBuf, ClientError> {
    if let Some(p) = &opts.ca_file {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(CA_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let system = Path::new(SYSTEM_BUNDLE);
    if system.exists() {
        return Ok(system.to_path_buf());
    }
    Err(tls_error(format!(
        "no CA to trust: set a CA file (ConnectOptions::tls.ca_file, mq-client --tls-ca) or {CA_ENV}"
    )))
}

/// Builds the rustls client configuration of `opts`. Errors name the file at fault.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let ca = ca_path(opts)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs("CA file", &ca)?);
    if added == 0 {
        return Err(tls_error(format!(
            "CA file {}: no usable CA certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&opts.cert_file, &opts.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs("client certificate", cert)?;
            let data = read_file("client key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
                tls_error(format!(
                    "client key {}: no usable PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                tls_error(format!(
                    "client key {} does not go with the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?
        }
        (Some(_), None) => {
            return Err(tls_error(
                "a client certificate needs its private key (tls key file)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(tls_error(
                "a client key needs its certificate (tls cert file)".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// Runs the TLS handshake over `tcp`, verifying the broker's certificate for `host` (or the
/// configured server name). `addr` names the broker in errors.
pub(crate) async fn connect(
    tcp: TcpStream,
    host: &str,
    opts: &TlsOptions,
    addr: &str,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let config = client_config(opts)?;
    let name = opts.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|e| tls_error(format!("{name:?} is not a valid TLS server name: {e}")))?;
    TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::TlsHandshake {
            addr: addr.to_owned(),
            source,
        })
}

/// A connected socket: plain TCP or TLS.
pub(crate) enum Stream {
    /// `tcp://`, `stomp://`.
    Plain(TcpStream),
    /// `ssl://`, `stomp+ssl://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Splits into the driver's halves (plain TCP without a lock, TLS through
    /// [`tokio::io::split`]).
    pub(crate) fn into_split(self) -> (SocketRead, SocketWrite) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (SocketRead::Plain(r), SocketWrite::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (SocketRead::Tls(r), SocketWrite::Tls { io: w, accepted: 0 })
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The read half the driver reads from.
pub(crate) enum SocketRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for SocketRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            SocketRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The write half the driver writes to (see the module docs for the TLS write rule).
pub(crate) enum SocketWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS; `accepted`: bytes rustls took whose flush is still under way.
    Tls {
        /// The TLS stream's write half.
        io: tokio::io::WriteHalf<TlsStream<TcpStream>>,
        /// Bytes taken by rustls and not yet reported.
        accepted: usize,
    },
}

impl AsyncWrite for SocketWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SocketWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            SocketWrite::Tls { io, accepted } => {
                if *accepted == 0 {
                    match ready!(Pin::new(&mut *io).poll_write(cx, buf)) {
                        Ok(0) => return Poll::Ready(Ok(0)),
                        Ok(n) => *accepted = n,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                ready!(Pin::new(io).poll_flush(cx))?;
                Poll::Ready(Ok(std::mem::take(accepted).min(buf.len())))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            SocketWrite::Tls { io, .. } => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            SocketWrite::Tls { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }
}

//! The webhook HTTP(S) client: resolves the host, re-checks every resolved
//! address against the SSRF rules, connects to a checked address (so DNS
//! rebinding cannot swap it), speaks TLS for `https://` (rustls, verifying
//! the certificate against the URL's host name), and POSTs the signed body.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ssrf;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The error of [`HttpTransport::open`] when every address the host
/// resolves to is refused by the SSRF rules (callers may tell it apart).
pub const NO_ALLOWED_ADDRESS: &str = "the host resolves to no allowed address";
const MAX_RESPONSE: usize = 64 * 1024;

/// The future a [`Transport`] returns.
pub type PostFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// Sends one signed webhook. Returns the response body parsed as JSON
/// (`Null` when it is not JSON); a transport failure or a non-2xx status is
/// an `Err` that the engine retries. A trait so tests can stand in for the
/// network.
pub trait Transport: Send + Sync {
    fn post<'a>(&'a self, url: &'a str, signature: &'a str, body: Bytes) -> PostFuture<'a>;
}

/// The real client.
pub struct HttpTransport {
    tls: tokio_rustls::TlsConnector,
}

impl HttpTransport {
    /// Trusts the built-in Mozilla roots, plus every certificate in the PEM
    /// file `extra_ca` when given.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, String> {
        let config = crate::tls::client_config(extra_ca)?;
        Ok(HttpTransport {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

impl Default for HttpTransport {
    fn default() -> Self {
        // Without an extra file nothing can fail.
        Self::new(None).unwrap_or_else(|e| unreachable!("built-in TLS roots: {e}"))
    }
}

impl Transport for HttpTransport {
    fn post<'a>(&'a self, url: &'a str, signature: &'a str, body: Bytes) -> PostFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(TIMEOUT, self.send(url, signature, body))
                .await
                .map_err(|_| "webhook timed out".to_string())?
        })
    }
}

impl HttpTransport {
    /// Resolves `target`, picks an address the SSRF rules allow (loopback
    /// only for the development exception), connects to it, speaks TLS for
    /// `https://` (the certificate checked against the URL's host name)
    /// and opens an HTTP/1.1 connection. Shared with the proxy's upstream
    /// requests.
    pub async fn open(
        &self,
        target: &ssrf::Target,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect();
        let addr = addrs
            .into_iter()
            .find(|a| {
                if target.dev_local {
                    a.ip().is_loopback()
                } else {
                    ssrf::check_ip(a.ip()).is_ok()
                }
            })
            .ok_or(NO_ALLOWED_ADDRESS)?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        if target.https {
            // The certificate is checked against the URL's host name, while
            // the connection goes to the address checked above.
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| format!("bad TLS server name: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(tls).await
        } else {
            handshake(tcp).await
        }
    }

    async fn send(
        &self,
        url: &str,
        signature: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, String> {
        let target = ssrf::parse(url)?;
        let send = self.open(&target).await?;
        let req = hyper::Request::post(target.path.as_str())
            .header("host", target.host_header())
            .header("content-type", "application/json")
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        exchange(send, req).await
    }
}

/// An HTTP/1.1 client connection over `io`, driven by its own task.
async fn handshake<S>(io: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// One HTTP/1.1 request and its (bounded) response on a fresh connection.
async fn exchange(
    mut send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<serde_json::Value, String> {
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let bytes = Limited::new(res.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("webhook answered {status}"));
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

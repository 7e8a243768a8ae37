//! Fetching `auth.jwt.jwks_url` in the background: at start and every
//! `jwks_refresh` after (every 30 s at most while fetches fail), until
//! shutdown. A failed fetch keeps the keys fetched before.
//!
//! The URL is the operator's, not a client's, so it may name any host;
//! it must be `https://` (Mozilla's roots, plus `webhook_ca_file`) or
//! `http://localhost`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::AppState;
use crate::subscriptions::ssrf;

/// Largest JWKS document read.
const MAX_JWKS: usize = 256 * 1024;
/// One fetch may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Retry period while fetches fail.
const RETRY: Duration = Duration::from_secs(30);

/// Starts the refresh task when a JWKS URL is configured.
pub fn spawn_refresh(state: &AppState) {
    let (Some(url), Some(verifier)) = (state.config.auth.jwt.jwks_url.clone(), state.jwt.clone())
    else {
        return;
    };
    let every = state.config.auth.jwt.jwks_refresh;
    let extra_ca = state.config.webhook_ca_file.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let tls = match crate::tls::client_config(extra_ca.as_deref()) {
            Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
            Err(e) => return tracing::error!(error = %e, "jwks_url: no TLS configuration"),
        };
        loop {
            let next = match fetch(&tls, &url).await {
                Ok(text) => match verifier.set_fetched(&text) {
                    Ok(n) => {
                        tracing::info!(keys = n, "jwks_url: keys refreshed");
                        every
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "jwks_url: not a usable JWKS; keeping the old keys");
                        every.min(RETRY)
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "jwks_url: fetch failed; keeping the old keys");
                    every.min(RETRY)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// GETs `url` and returns its body (at most `MAX_JWKS` bytes).
pub async fn fetch(tls: &tokio_rustls::TlsConnector, url: &str) -> Result<String, String> {
    tokio::time::timeout(TIMEOUT, get(tls, url))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn get(tls: &tokio_rustls::TlsConnector, url: &str) -> Result<String, String> {
    let target = ssrf::parse(url).map_err(|e| e.replace("webhook", "jwks"))?;
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.host))?;
    let req = hyper::Request::get(target.path.as_str())
        .header("host", target.host.as_str())
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if target.https {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| format!("bad TLS server name: {e}"))?;
        let io = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(io, req).await
    } else {
        exchange(tcp, req).await
    }
}

async fn exchange<S>(io: S, req: hyper::Request<Empty<Bytes>>) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("answered {}", res.status()));
    }
    let body = Limited::new(res.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the JWKS is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `body` with `status` to every connection on 127.0.0.1.
    async fn serve(status: &'static str, body: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/jwks.json",
            l.local_addr().unwrap().port()
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        url
    }

    fn tls() -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::new(crate::tls::client_config(None).unwrap()))
    }

    #[tokio::test]
    async fn fetches_a_document_and_refuses_errors() {
        let url = serve("200 OK", "{\"keys\": []}").await;
        assert_eq!(fetch(&tls(), &url).await.unwrap(), "{\"keys\": []}");
        let url = serve("404 Not Found", "").await;
        assert!(fetch(&tls(), &url).await.unwrap_err().contains("404"));
        // Plain http only to localhost.
        let e = fetch(&tls(), "http://idp.example/jwks").await.unwrap_err();
        assert!(e.contains("https"), "{e}");
    }
}

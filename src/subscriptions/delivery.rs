//! The webhook HTTP client: resolves the host, re-checks every resolved
//! address against the SSRF rules, connects to a checked address (so DNS
//! rebinding cannot swap it) and POSTs the signed body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::ssrf;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 64 * 1024;

/// POSTs `body` and returns the response body parsed as JSON (`Null` when
/// it is not JSON). A non-2xx status is an error.
pub async fn post(url: &str, signature: &str, body: Bytes) -> Result<serde_json::Value, String> {
    let target = ssrf::parse(url)?;
    if target.https {
        // TLS delivery needs a TLS client, not part of this increment.
        return Err("https webhook delivery is not implemented yet".into());
    }
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
        .ok_or("webhook host resolves to no allowed address")?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let host = if target.port == 80 {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let req = hyper::Request::post(target.path.as_str())
            .header("host", host)
            .header("content-type", "application/json")
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
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
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| "webhook timed out".to_string())?
}

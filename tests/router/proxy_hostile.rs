//! The proxy against hostile or unauthorized requests: missing and bad
//! headers, disallowed and private-address upstreams (also after DNS),
//! tampered, expired and missing signatures, service authentication.

use axum::body::Body;

use super::proxy::{code, config, location, setup};
use crate::common::router::{header, req, send, text};
use durable_streams::config::{Secret, ServerConfig};

#[tokio::test]
async fn hostile_create_requests() {
    let (_st, app, up) = setup(config()).await;
    let post = |url: Option<&str>, method: Option<&str>| {
        let mut b = req("POST", "/v1/proxy");
        if let Some(u) = url {
            b = b.header("upstream-url", u);
        }
        if let Some(m) = method {
            b = b.header("upstream-method", m);
        }
        b.body(Body::empty()).unwrap()
    };
    let sse = up.url("/sse");
    for (url, method, status, want) in [
        (None, Some("GET"), 400, "MISSING_UPSTREAM_URL"),
        (Some(sse.as_str()), None, 400, "MISSING_UPSTREAM_METHOD"),
        (
            Some(sse.as_str()),
            Some("CONNECT"),
            400,
            "INVALID_UPSTREAM_METHOD",
        ),
        (
            Some(sse.as_str()),
            Some("get"),
            400,
            "INVALID_UPSTREAM_METHOD",
        ),
        (Some("not a url"), Some("GET"), 400, "INVALID_UPSTREAM_URL"),
        (Some("/relative"), Some("GET"), 400, "INVALID_UPSTREAM_URL"),
        (
            Some("ftp://127.0.0.1/x"),
            Some("GET"),
            400,
            "INVALID_UPSTREAM_URL",
        ),
        (
            Some("https://example.com/"),
            Some("GET"),
            403,
            "UPSTREAM_NOT_ALLOWED",
        ),
        (
            Some("http://localhost:1/x"),
            Some("GET"),
            403,
            "UPSTREAM_NOT_ALLOWED",
        ),
        (
            Some("http://127.0.0.1:1/../x"),
            Some("GET"),
            403,
            "UPSTREAM_NOT_ALLOWED",
        ),
        (
            Some("http://user@127.0.0.1:1/x"),
            Some("GET"),
            403,
            "UPSTREAM_NOT_ALLOWED",
        ),
    ] {
        let res = send(&app, post(url, method)).await;
        assert_eq!(res.status(), status, "{url:?} {method:?}");
        assert_eq!(code(res).await, want, "{url:?} {method:?}");
    }
    // Private addresses are refused even when the allowlist names them.
    let mut c = config();
    c.proxy.allowlist = vec![
        "https://10.0.0.1/*".into(),
        "https://169.254.169.254/*".into(),
        "http://10.1.1.1/*".into(),
        "https://[::ffff:192.168.0.1]/*".into(),
    ];
    let (_st, app, _up) = setup(c).await;
    for url in [
        "https://10.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "http://10.1.1.1/x",
        "https://[::ffff:192.168.0.1]/x",
    ] {
        let res = send(&app, post(Some(url), Some("GET"))).await;
        assert_eq!(res.status(), 403, "{url}");
        assert_eq!(code(res).await, "UPSTREAM_NOT_ALLOWED");
    }
    // Hosts that pass the static checks but resolve to loopback (the
    // resolver reads 2130706433 and 0x7f.1 as 127.0.0.1; neither is the
    // development exception): refused after resolving.
    let mut c = config();
    c.proxy.allowlist = vec!["https://2130706433:*/*".into(), "https://0x7f.1:*/*".into()];
    let (_st, app, _up) = setup(c).await;
    let res = send(&app, post(Some("https://2130706433:1/x"), Some("GET"))).await;
    let status = res.status();
    let detail = text(res).await;
    assert_eq!(status, 403, "{detail}");
    assert!(detail.contains("UPSTREAM_NOT_ALLOWED"));
    let res = send(&app, post(Some("https://0x7f.1:1/x"), Some("GET"))).await;
    assert_eq!(res.status(), 403);

    // An empty allowlist refuses everything.
    let mut c = config();
    c.proxy.allowlist.clear();
    let (_st, app, up) = setup(c).await;
    let res = send(&app, post(Some(&up.url("/sse")), Some("GET"))).await;
    assert_eq!(res.status(), 403);
    // Disabled: the route does not exist.
    let (_st, app, up) = setup(ServerConfig::default()).await;
    let res = send(&app, post(Some(&up.url("/sse")), Some("GET"))).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn tampered_expired_and_missing_signatures() {
    let (st, app, up) = setup(config()).await;
    let loc = location(&app, &up.url("/sse?n=1")).await;
    let (path, query) = loc.split_once('?').unwrap();
    let id = path.trim_start_matches("/v1/proxy/");
    let get = |uri: String| req("GET", &uri).body(Body::empty()).unwrap();
    // A flipped signature character, another stream's signature, a moved
    // expiry.
    let sig = query.split("signature=").nth(1).unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &loc[..loc.len() - sig.len()], &sig[1..]);
    let exp: u64 = query
        .split('&')
        .next()
        .unwrap()
        .trim_start_matches("expires=")
        .parse()
        .unwrap();
    let moved = loc.replace(&format!("expires={exp}"), &format!("expires={}", exp + 1));
    let other = location(&app, &up.url("/sse?n=1")).await;
    let other_id = other
        .split('?')
        .next()
        .unwrap()
        .trim_start_matches("/v1/proxy/");
    let swapped = loc.replace(id, other_id);
    for uri in [
        tampered,
        moved,
        swapped,
        format!("{path}?expires={exp}&signature="),
        format!("{path}?expires=x&signature={sig}"),
    ] {
        let res = send(&app, get(uri.clone())).await;
        assert_eq!(res.status(), 401, "{uri}");
        assert_eq!(code(res).await, "SIGNATURE_INVALID", "{uri}");
    }
    // A genuine signature whose time has passed.
    let key = st.proxy.key(&st.storage).await.unwrap();
    let expired = format!("{path}?expires=1000&signature={}", key.sign(id, 1000));
    let res = send(&app, get(expired)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(code(res).await, "SIGNATURE_EXPIRED");
    // Abort needs the pre-signed URL, even with auth off.
    let res = send(
        &app,
        req("PATCH", &format!("{path}?action=abort"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 401);
    assert_eq!(code(res).await, "MISSING_SIGNATURE");
    // With auth off, GET falls back to (open) service authentication.
    assert_eq!(send(&app, get(path.to_string())).await.status(), 200);
}

#[tokio::test]
async fn service_auth_uses_the_write_scope() {
    let mut c = config();
    c.auth.enabled = true;
    c.auth.write_tokens = vec![Secret("w".into())];
    c.auth.read_tokens = vec![Secret("r".into())];
    let (_st, app, up) = setup(c).await;
    let post = |token: Option<&str>| {
        let mut b = req("POST", "/v1/proxy")
            .header("upstream-url", up.url("/stall-body?n=1"))
            .header("upstream-method", "GET");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    };
    let res = send(&app, post(None)).await;
    assert_eq!(
        (res.status().as_u16(), code(res).await.as_str()),
        (401, "MISSING_SECRET")
    );
    let res = send(&app, post(Some("nope"))).await;
    assert_eq!(
        (res.status().as_u16(), code(res).await.as_str()),
        (401, "INVALID_SECRET")
    );
    let res = send(&app, post(Some("r"))).await;
    assert_eq!(res.status(), 403);
    let res = send(&app, post(Some("w"))).await;
    assert_eq!(res.status(), 201);
    let loc = header(&res, "location").unwrap().to_string();
    let path = loc.split('?').next().unwrap().to_string();
    let with = |method: &str, uri: &str, token: Option<&str>| {
        let mut b = req(method, uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    };
    // The pre-signed URL reads without a token; service auth reads without
    // the URL; neither is 401 MISSING_SIGNATURE.
    assert_eq!(send(&app, with("GET", &loc, None)).await.status(), 200);
    assert_eq!(
        send(&app, with("GET", &path, Some("w"))).await.status(),
        200
    );
    let res = send(&app, with("GET", &path, None)).await;
    assert_eq!(
        (res.status().as_u16(), code(res).await.as_str()),
        (401, "MISSING_SIGNATURE")
    );
    // HEAD and DELETE: service auth only, the pre-signed URL is not enough.
    let res = send(&app, with("HEAD", &loc, None)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        send(&app, with("HEAD", &path, Some("w"))).await.status(),
        200
    );
    // Abort: the pre-signed URL only, a service token is not enough.
    let res = send(
        &app,
        with("PATCH", &format!("{path}?action=abort"), Some("w")),
    )
    .await;
    assert_eq!(
        (res.status().as_u16(), code(res).await.as_str()),
        (401, "MISSING_SIGNATURE")
    );
    assert_eq!(
        send(&app, with("PATCH", &format!("{loc}&action=abort"), None))
            .await
            .status(),
        204
    );
    assert_eq!(send(&app, with("DELETE", &loc, None)).await.status(), 401);
    assert_eq!(
        send(&app, with("DELETE", &path, Some("w"))).await.status(),
        204
    );
}

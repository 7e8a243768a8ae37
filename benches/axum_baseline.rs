//! Bare axum baseline for the load generator: answers `204` to any POST after
//! reading its body, and nothing else. It bounds what any axum server can do
//! on this machine, so our figures can be read against it.
//!
//! Does nothing unless `DS_BASELINE_BIND=host:port` is set (so that
//! `cargo test --all-targets` finishes at once).

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

async fn sink(body: Bytes) -> StatusCode {
    std::hint::black_box(body);
    StatusCode::NO_CONTENT
}

fn main() {
    let Ok(bind) = std::env::var("DS_BASELINE_BIND") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route("/{*path}", post(sink).put(sink))
            .fallback(sink);
        let listener = tokio::net::TcpListener::bind(&bind).await.expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("addr")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}

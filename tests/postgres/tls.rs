//! TLS to the database: a server whose certificate the node cannot verify is
//! refused at once (a setting to fix, not an outage to wait out), and with
//! `database_ca_file` trusting it, every connection the node opens is
//! encrypted. Runs its own PostgreSQL server (`pg::OwnServer`), so turning
//! TLS on touches no other test.

use crate::common;

use crate::common::pg;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

#[test]
fn tls_to_the_database_is_verified_against_the_configured_ca() {
    let server = pg::OwnServer::start("tls");
    let url = server.url().to_string();
    let dir = PathBuf::from(server.dir());

    // A certificate for 127.0.0.1, kept in the data directory (PostgreSQL
    // insists on owning its key), and TLS turned on.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), ck.cert.pem()).unwrap();
    let owner = Command::new("stat")
        .args(["-c", "%U"])
        .arg(&dir)
        .output()
        .unwrap();
    let owner = String::from_utf8(owner.stdout).unwrap();
    for f in [&cert, &key] {
        let ok = Command::new("chown")
            .arg(owner.trim())
            .arg(f)
            .status()
            .unwrap();
        assert!(ok.success(), "chown {}", f.display());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pg::psql(&url, "ALTER SYSTEM SET ssl = on");
    pg::psql(
        &url,
        &format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
    );
    pg::psql(
        &url,
        &format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
    );
    pg::psql(&url, "SELECT pg_reload_conf()");
    let tls_url = format!("{}?sslmode=require", server.fresh_database("tls"));

    // Untrusted: the node refuses to start, and says why, without waiting.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .args(["serve", "--bind", "127.0.0.1:0", "--storage", "postgres"])
        .args(["--database-url", &tls_url])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without trusting the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "a refused certificate is not an outage to wait out"
    );

    // Trusted through database_ca_file: it serves, over TLS only.
    let node = Server::start_with_env(
        &["--storage", "postgres", "--database-url", &tls_url],
        &[("DS_DATABASE_CA_FILE", ca.path().to_str().unwrap())],
    );
    let put = node.request(
        "PUT",
        "/v1/stream/tls",
        &[("content-type", "text/plain")],
        b"hi",
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let get = node.request("GET", "/v1/stream/tls?offset=-1", &[], b"");
    assert_eq!(get.text(), "hi");
    let counts = pg::psql(
        &url,
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'durable-streams'",
    );
    let (all, encrypted) = counts.trim().split_once(' ').unwrap();
    assert!(all.parse::<u32>().unwrap() >= 2, "{counts}");
    assert_eq!(all, encrypted, "every connection is encrypted: {counts}");
    drop(node);
    drop(server);
}

//! The container's runtime contract, without a Docker engine: run the exact
//! command line of the Dockerfile's CMD with the config file it bakes in, then
//! its HEALTHCHECK command against that server.

use crate::common;

use std::process::Command;

/// The JSON array after `keyword` on a Dockerfile line (CMD / HEALTHCHECK ... CMD).
fn exec_form(dockerfile: &str, prefix: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("Dockerfile has no {prefix} line"));
    let json = &line[line.find('[').expect("exec form")..=line.rfind(']').expect("exec form")];
    serde_json::from_str(json).expect("exec-form JSON array")
}

#[test]
fn the_image_command_serves_and_passes_its_own_healthcheck() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY docker/config.toml /etc/durable-streams/config.toml"));
    assert!(dockerfile.contains("USER durable") && dockerfile.contains("VOLUME /data"));
    assert!(dockerfile.contains("EXPOSE 4437"));

    // CMD, with the baked-in config path pointing at the repository's copy.
    let cmd = exec_form(&dockerfile, "CMD [");
    assert_eq!(cmd[0], "serve");
    let args: Vec<String> = cmd[1..]
        .iter()
        .map(|a| {
            a.replace(
                "/etc/durable-streams/config.toml",
                &format!("{root}/docker/config.toml"),
            )
        })
        .collect();
    let config = std::fs::read_to_string(format!("{root}/docker/config.toml")).unwrap();
    assert!(
        config.contains("bind = \"0.0.0.0:4437\""),
        "binds all interfaces inside the container"
    );
    assert!(config.contains("data_dir = \"/data\""));

    // Inside a test we cannot own port 4437 or /data: override both the way
    // `docker run -e` would, through the environment layer.
    let data = tempfile::tempdir().unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = common::Server::start_raw(
        &args,
        &[
            ("DS_BIND", "127.0.0.1:0"),
            ("DS_DATA_DIR", data.path().to_str().unwrap()),
        ],
    );
    let r = server.request(
        "PUT",
        "/v1/stream/in-container",
        &[("Content-Type", "text/plain")],
        b"x",
    );
    assert_eq!(r.status, 201);
    assert!(
        data.path().join("wal").is_dir(),
        "durable file backend in the data volume"
    );

    // HEALTHCHECK ... CMD ["durable-streams", "health", "--url", URL]
    let health = exec_form(&dockerfile, "HEALTHCHECK");
    assert_eq!(health[0], "durable-streams");
    let url = health
        .iter()
        .map(|a| a.replace("127.0.0.1:4437", &server.addr))
        .collect::<Vec<_>>();
    let ok = Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .args(&url[1..])
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "healthcheck passes against the running server"
    );
    drop(server);
    let down = Command::new(env!("CARGO_BIN_EXE_durable-streams"))
        .args(&url[1..])
        .output()
        .unwrap();
    assert!(
        !down.status.success(),
        "healthcheck fails once the server is gone"
    );
}

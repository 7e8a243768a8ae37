//! The PostgreSQL test harness itself (tests/common/pg.rs over scripts/pg.sh):
//! fresh databases exist, are empty and distinct, and survive a restart.

use crate::common::pg;

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        pg::with_database("postgres://ds@127.0.0.1:54329/postgres", "x"),
        "postgres://ds@127.0.0.1:54329/x"
    );
    assert_eq!(
        pg::with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(pg::with_database("postgres://h:1", "x"), "postgres://h:1/x");
}

// One test, holding `pg::outage`, so the restart cannot cut another test's
// connection (the tests of this binary on the shared server hold `pg::shared`).
#[test]
fn fresh_databases_are_empty_distinct_and_survive_a_restart() {
    let _outage = pg::outage();
    let a = pg::fresh_database("harness");
    let b = pg::fresh_database("harness");
    assert_ne!(a, b);
    assert_eq!(pg::psql(&a, "SELECT 1"), "1");
    let name = a.rsplit('/').next().expect("URL has a path");
    assert_eq!(pg::psql(&a, "SELECT current_database()"), name);

    pg::psql(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
    assert_eq!(pg::psql(&b, tables), "0", "a fresh database is empty");

    pg::restart_server();
    assert_eq!(pg::psql(&a, "SELECT x FROM t"), "42");
    pg::stop_server();
    pg::start_server();
    assert_eq!(pg::psql(&a, "SELECT x FROM t"), "42");
}

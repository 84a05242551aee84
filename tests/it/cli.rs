//! The `postbote` command itself: configuration errors, `check`, `migrate` (judged
//! by the tables and versions it leaves), readiness while the database is gone, and
//! the admin token made on first start. Every process gets a deadline: one that
//! hangs is killed and the test fails with what it printed.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{Backend, RefusedPort, Spawned, TestApp, TestDb, run_to_end, test_config};

fn postbote(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postbote"));
    cmd.current_dir(dir).args(args).env("POSTBOTE_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    run_to_end(cmd, None)
}

/// Starts `postbote serve` on a port the OS picks, and waits until it logs which;
/// returns the process and its base URL.
async fn serve(cmd: &mut Command) -> (Spawned, String) {
    let mut child = Spawned::start(cmd.env("POSTBOTE_LISTEN", "127.0.0.1:0"), None);
    let line = child
        .wait_for_log("postbote is serving", Duration::from_secs(30))
        .await;
    let address = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, format!("http://{address}"))
}

/// Sends SIGTERM and waits (with a deadline) for the process to exit.
fn stop(child: Spawned) -> Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The contract: graceful, and within 30 s.
    child.wait(Duration::from_secs(40))
}

#[test]
fn bad_configuration_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut postbote(
        dir.path(),
        &["serve"],
        &[("POSTBOTE_LISTEN", "localhost-8080")],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POSTBOTE_LISTEN"), "{err}");

    std::fs::write(dir.path().join("p.toml"), "[delivery]\nworkers = 0\n").unwrap();
    let out = run(&mut postbote(
        dir.path(),
        &["check", "--config", "p.toml"],
        &[],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.workers"));

    std::fs::write(dir.path().join("p.toml"), "smpt_url = \"smtp://x\"\n").unwrap();
    let out = run(&mut postbote(
        dir.path(),
        &["check", "--config", "p.toml"],
        &[],
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smpt_url"),
        "an unknown key is named"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn the_example_configuration_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/postbote.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut postbote(
        dir.path(),
        &["check", "--config", example],
        &[],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("templates: ok") && stdout.contains("database: ok"),
        "{stdout}"
    );
}

#[test]
fn check_fails_on_a_broken_template_and_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tpl/pages")).unwrap();
    std::fs::write(
        dir.path().join("tpl/pages/subscribe.hbs"),
        "{{#each topics}}",
    )
    .unwrap();
    std::fs::write(dir.path().join("p.toml"), "templates_dir = \"tpl\"\n").unwrap();
    let out = run(&mut postbote(
        dir.path(),
        &["check", "--config", "p.toml"],
        &[],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pages/subscribe.hbs"));

    let down = RefusedPort::new();
    let url = format!("postgres://nobody@127.0.0.1:{}/none", down.port);
    let out = run(&mut postbote(
        dir.path(),
        &["check"],
        &[("POSTBOTE_DATABASE_URL", &url)],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database"));
}

/// The versions of a backend's migration files, and the tables they create that a
/// later one does not drop.
fn migration_files(backend: Backend) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        });
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    let name_after = |text: &str, keyword: &str| -> Vec<String> {
        text.split(keyword)
            .skip(1)
            .map(|rest| {
                rest.trim_start_matches("IF NOT EXISTS ")
                    .trim_start_matches("IF EXISTS ")
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    };
    let (mut versions, mut tables) = (BTreeSet::new(), BTreeSet::new());
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number = name.split('_').next().unwrap();
        versions.insert(number.parse::<i64>().unwrap().to_string());
        let sql = std::fs::read_to_string(&path).unwrap();
        tables.extend(name_after(&sql, "CREATE TABLE "));
        for dropped in name_after(&sql, "DROP TABLE ") {
            tables.remove(&dropped);
        }
    }
    (versions, tables)
}

/// What a migration leaves behind: the tables, the recorded migrations (version,
/// description, success, time) and the rows in every table.
#[derive(Debug, PartialEq)]
struct Schema {
    tables: BTreeSet<String>,
    applied: Vec<Vec<Option<String>>>,
    rows: Vec<(String, String)>,
}

async fn schema(db: &TestDb, backend: Backend) -> Schema {
    let list = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        }
    };
    let tables: BTreeSet<String> = db
        .text_rows(list, &[])
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    let applied = db
        .text_rows(
            "SELECT CAST(version AS TEXT), description, CAST(success AS TEXT), \
             CAST(installed_on AS TEXT) FROM _sqlx_migrations ORDER BY version",
            &[],
        )
        .await;
    let mut rows = Vec::new();
    for table in &tables {
        let count = db
            .text_rows(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"), &[])
            .await;
        rows.push((table.clone(), count[0][0].clone().unwrap()));
    }
    Schema {
        tables,
        applied,
        rows,
    }
}

async fn migrate_creates_every_table_and_records_every_version_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (versions, tables) = migration_files(backend);
    assert!(
        tables.contains("subscribers") && tables.contains("mail_jobs") && versions.len() >= 8,
        "the migration files are read: {versions:?} {tables:?}"
    );
    let migrate = || {
        run(&mut postbote(
            db.dir.path(),
            &["migrate"],
            &[("POSTBOTE_DATABASE_URL", &db.url)],
        ))
    };
    let out = migrate();
    assert!(
        out.status.success(),
        "{backend:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = schema(&db, backend).await;
    let missing: Vec<&String> = tables.difference(&first.tables).collect();
    assert!(missing.is_empty(), "tables not created: {missing:?}");
    let recorded: BTreeSet<String> = first
        .applied
        .iter()
        .map(|m| m[0].clone().unwrap())
        .collect();
    assert_eq!(recorded, versions, "every migration recorded, no other");
    assert_eq!(first.applied.len(), versions.len(), "each once");
    assert!(
        first
            .applied
            .iter()
            .all(|m| matches!(m[2].as_deref(), Some("true" | "1"))),
        "all applied successfully: {:?}",
        first.applied
    );

    if backend == Backend::Postgres {
        // On a server with lz4 (Debian's has it), digest bodies and queued mails
        // are written with it (0015); without, they keep the default.
        let lz4 = db
            .text_rows(
                "SELECT CAST('lz4' = ANY(enumvals) AS TEXT) FROM pg_settings \
                 WHERE name = 'default_toast_compression'",
                &[],
            )
            .await;
        let expected = match lz4.first().and_then(|r| r[0].as_deref()) {
            Some("true") => Some("l"),
            _ => Some(""),
        };
        let methods = db
            .text_rows(
                "SELECT CAST(attcompression AS TEXT) FROM pg_attribute \
                 WHERE (attrelid = 'digest_bodies'::regclass AND attname IN ('text_part', 'html_part')) \
                 OR (attrelid = 'mail_jobs'::regclass AND attname = 'message')",
                &[],
            )
            .await;
        assert_eq!(methods.len(), 3);
        assert!(
            methods.iter().all(|m| m[0].as_deref() == expected),
            "digest bodies and queued mails compress with lz4 where the server has it: {methods:?}"
        );
    }

    let again = migrate();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        schema(&db, backend).await,
        first,
        "migrating twice changes nothing"
    );
    let out = run(&mut postbote(
        db.dir.path(),
        &["check"],
        &[("POSTBOTE_DATABASE_URL", &db.url)],
    ));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("database: ok"));
}

/// Polls `path` until it answers `status`, failing after 30 s.
async fn wait_status(app: &TestApp, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = app.http.get(app.url(path)).send().await.unwrap().status();
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readiness_fails_while_the_database_is_gone_and_liveness_stays(backend: Backend) {
    let db = TestDb::new(backend).await;
    let relay = RefusedPort::new();
    let app = TestApp::spawn(test_config(&db, &relay.smtp_url())).await;
    for path in ["/readyz", "/healthz"] {
        assert_eq!(
            app.http.get(app.url(path)).send().await.unwrap().status(),
            200
        );
    }

    // PostgreSQL: the database refuses new connections and the server ends the
    // app's open ones, as when it is shut down. SQLite lives in the process: its
    // one connection is shut, so the app cannot reach the file any more.
    let admin = std::env::var("POSTBOTE_TEST_PG_URL").unwrap_or_default();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let set_connections = |allowed: bool| {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            let pool = sqlx::PgPool::connect(&admin).await.unwrap();
            let sql = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allowed}");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
            if !allowed {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(&name)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
    };
    match backend {
        Backend::Postgres => set_connections(false).await,
        Backend::Sqlite => app.store.close().await,
    }
    wait_status(&app, "/readyz", 503).await;
    let live = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200, "the process itself is alive");
    assert_eq!(live.text().await.unwrap(), "ok\n");

    if backend == Backend::Postgres {
        // The database comes back: ready again, without a restart.
        set_connections(true).await;
        wait_status(&app, "/readyz", 200).await;
    }
}

on_both_backends!(
    migrate_creates_every_table_and_records_every_version_once,
    readiness_fails_while_the_database_is_gone_and_liveness_stays,
);

/// Waits until `base` answers `/readyz` with 200, failing after 30 s.
async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn first_start_makes_a_private_admin_token_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let (child, base) =
        serve(postbote(dir.path(), &["serve"], &[]).env_remove("POSTBOTE_ADMIN_TOKEN")).await;
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let path = dir.path().join("data/admin-token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        dir.path().join("data/postbote.db").exists(),
        "SQLite is the default store"
    );
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(token.len() >= 32);
    let ok = http
        .get(format!("{base}/api/v1/topics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let out = stop(child);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("data/admin-token"),
        "the log names the token file: {log}"
    );
    assert!(!log.contains(&token), "the token itself is never logged");
}

#[tokio::test]
async fn serve_demo_seeds_topics_and_items_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    for round in 0..2 {
        let (child, base) = serve(&mut postbote(
            dir.path(),
            &["serve", "--demo"],
            &[("POSTBOTE_ADMIN_TOKEN", "demo-admin-token-0123456789")],
        ))
        .await;
        wait_ready(&http, &base).await;
        let page = http
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("value=\"wirtschaft\"") && page.contains("IT &amp; Telekommunikation")
        );
        let items: serde_json::Value = http
            .get(format!("{base}/api/v1/items"))
            .bearer_auth("demo-admin-token-0123456789")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            items["items"].as_array().unwrap().len(),
            3,
            "round {round}: the demo items, once"
        );
        let out = stop(child);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

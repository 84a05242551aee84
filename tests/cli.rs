//! The `postbote` command itself: configuration errors, `check`, `migrate`, and the
//! admin token made on first start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb, free_port};

fn postbote(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postbote"));
    cmd.current_dir(dir).args(args).env("POSTBOTE_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run postbote")
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

    let url = format!("postgres://nobody@127.0.0.1:{}/none", free_port());
    let out = run(&mut postbote(
        dir.path(),
        &["check"],
        &[("POSTBOTE_DATABASE_URL", &url)],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database"));
}

#[tokio::test]
async fn migrate_prepares_both_databases() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let out = run(&mut postbote(
            db.dir.path(),
            &["migrate"],
            &[("POSTBOTE_DATABASE_URL", &db.url)],
        ));
        assert!(
            out.status.success(),
            "{backend:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = run(&mut postbote(
            db.dir.path(),
            &["migrate"],
            &[("POSTBOTE_DATABASE_URL", &db.url)],
        ));
        assert!(again.status.success(), "migrating twice is harmless");
        let out = run(&mut postbote(
            db.dir.path(),
            &["check"],
            &[("POSTBOTE_DATABASE_URL", &db.url)],
        ));
        assert!(out.status.success());
    }
}

#[tokio::test]
async fn first_start_makes_a_private_admin_token_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = postbote(
        dir.path(),
        &["serve"],
        &[("POSTBOTE_LISTEN", &format!("127.0.0.1:{port}"))],
    )
    .env_remove("POSTBOTE_ADMIN_TOKEN")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
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
        let port = free_port();
        let mut child = postbote(
            dir.path(),
            &["serve", "--demo"],
            &[
                ("POSTBOTE_LISTEN", &format!("127.0.0.1:{port}")),
                ("POSTBOTE_ADMIN_TOKEN", "demo-admin-token-0123456789"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(child.wait().unwrap().success());
    }
}

//! Loading end to end: defaults, the environment over the file, and errors that
//! name their key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn zero_configuration_gives_the_documented_defaults() {
    let c = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(
        c.database,
        DatabaseUrl::Sqlite(PathBuf::from("data/postbote.db"))
    );
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.transport, Transport::Outbox(PathBuf::from("data/outbox")));
    assert_eq!(c.mail_from.to_string(), "Newsletter <newsletter@localhost>");
    assert_eq!(c.public_url_for(c.listen), "http://127.0.0.1:8080");
    assert_eq!(c.confirmation_lifetime, chrono::Duration::days(7));
    assert!(c.admin_token.is_none());
    let r = c.rate_limit;
    assert_eq!(
        (
            r.per_address_per_hour,
            r.per_domain_per_hour,
            r.global_per_hour
        ),
        (3, 50, 1000)
    );
    assert_eq!(r.suppressed_quiet_days, 30);
}

#[test]
fn environment_overrides_and_parses_smtp_urls() {
    let c = Config::from_sources(
        None,
        &env(&[
            (
                "POSTBOTE_SMTP_URL",
                "smtps://user%40x:p%2Bw@mail.example.org",
            ),
            ("POSTBOTE_DATABASE_URL", "postgres://localhost/postbote"),
            ("POSTBOTE_PUBLIC_URL", "https://news.example.org/"),
        ]),
    )
    .unwrap();
    let Transport::Smtp(relay) = c.transport else {
        panic!("smtp expected")
    };
    assert_eq!(relay.port, 465);
    assert_eq!(relay.tls, SmtpTls::Implicit);
    assert_eq!(relay.credentials, Some(("user@x".into(), "p+w".into())));
    assert_eq!(c.public_url.as_deref(), Some("https://news.example.org"));
    let c = Config::from_sources(
        None,
        &env(&[("POSTBOTE_SMTP_URL", "smtp://127.0.0.1:2525?tls=required")]),
    )
    .unwrap();
    let Transport::Smtp(relay) = c.transport else {
        panic!("smtp expected")
    };
    assert_eq!((relay.port, relay.tls), (2525, SmtpTls::StartTls));
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("POSTBOTE_LISTEN", "nonsense"),
        ("POSTBOTE_DATABASE_URL", "mysql://x"),
        ("POSTBOTE_SMTP_URL", "http://x"),
        ("POSTBOTE_MAIL_FROM", "not an address"),
        ("POSTBOTE_PUBLIC_URL", "news.example.org"),
        ("POSTBOTE_ADMIN_TOKEN", "short"),
    ];
    for (key, value) in cases {
        let err = Config::from_sources(None, &env(&[(key, value)])).unwrap_err();
        assert_eq!(err.key, key, "{value}");
    }
}

#[test]
fn file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[defaults]\ntimezone = \"Mars/Base\"\n").unwrap();
    let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
    assert_eq!(err.key, "defaults.timezone");
    std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
    std::fs::write(&path, "[[topics]]\nslug = \"Bad Slug\"\nname = \"x\"\n").unwrap();
    let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
    assert_eq!(err.key, "topics[0].slug");
}

#[test]
fn debug_output_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nS3CRET-KEY-BYTES\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "admin_token = \"admin-S3CRET-0123456789\"\n\
             metrics_token = \"metrics-S3CRET-0123456789\"\n\
             [dkim]\ndomain = \"example.org\"\nselector = \"s\"\nrsa_key = {:?}\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let c = Config::from_sources(
        Some(&path),
        &env(&[
            (
                "POSTBOTE_SMTP_URL",
                "smtps://mailer:smtp-S3CRET-pw@mail.example.org",
            ),
            (
                "POSTBOTE_DATABASE_URL",
                "postgres://postbote:db-S3CRET-pw@db.example.org/postbote?password=db-S3CRET-2",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.admin_token.as_ref().map(Secret::expose),
        Some("admin-S3CRET-0123456789")
    );
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("S3CRET"), "{shown}");
    assert!(
        shown.contains("mail.example.org") && shown.contains("mailer"),
        "the rest is still shown"
    );
}

#[test]
fn an_smtp_password_never_travels_in_plain_text_beyond_loopback() {
    for url in [
        "smtp://user:pw@mail.example.org:587",
        "smtp://user:pw@192.0.2.1",
        "smtp://user:pw@mail.example.org?tls=none",
    ] {
        let err = Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])).unwrap_err();
        assert_eq!(err.key, "POSTBOTE_SMTP_URL", "{url}");
        assert!(
            err.problem.contains("smtp_url") && err.problem.contains("plain text"),
            "{err}"
        );
    }
    for url in [
        "smtp://user:pw@127.0.0.1:25",
        "smtp://user:pw@localhost",
        "smtp://user:pw@[::1]:25",
        "smtp://user:pw@mail.example.org?tls=required",
        "smtps://user:pw@mail.example.org",
        "smtp://mail.example.org",
    ] {
        assert!(
            Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])).is_ok(),
            "{url}"
        );
    }
}

#[test]
fn a_relay_ca_file_comes_with_tls_only() {
    let relay = |url: &str| match Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])) {
        Ok(Config {
            transport: Transport::Smtp(relay),
            ..
        }) => Ok(relay),
        Ok(_) => panic!("smtp expected"),
        Err(e) => Err(e.problem),
    };
    let starttls = relay("smtp://relay.lan:587?tls=required&ca=/etc/postbote/relay%20ca.pem");
    let starttls = starttls.unwrap();
    assert_eq!(
        (starttls.tls, starttls.ca_file),
        (
            SmtpTls::StartTls,
            Some(PathBuf::from("/etc/postbote/relay ca.pem"))
        )
    );
    let implicit = relay("smtps://relay.lan?ca=/etc/postbote/ca.pem").unwrap();
    assert_eq!(
        implicit.ca_file,
        Some(PathBuf::from("/etc/postbote/ca.pem"))
    );
    assert_eq!(relay("smtps://mail.example.org").unwrap().ca_file, None);
    let plain = relay("smtp://127.0.0.1:25?ca=/etc/postbote/ca.pem").unwrap_err();
    assert!(plain.contains("ca="), "{plain}");
}

#[test]
fn trusted_proxies_are_networks_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n",
    )
    .unwrap();
    let c = Config::from_sources(Some(&path), &env(&[])).unwrap();
    let trusted = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        c.trusted_proxies.iter().any(|n| n.contains(ip))
    };
    assert!(trusted("10.1.2.3") && trusted("::ffff:10.1.2.3"));
    assert!(trusted("2001:db8:ffff::1") && trusted("192.0.2.7"));
    assert!(!trusted("11.0.0.1") && !trusted("192.0.2.8") && !trusted("2001:db9::1"));
    let defaults = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(
        defaults.trusted_proxies,
        vec![
            IpNetwork::parse("127.0.0.1").unwrap(),
            IpNetwork::parse("::1/128").unwrap()
        ]
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0.1/8",
        "proxy.example.org",
        "10.0.0.0/x",
    ] {
        std::fs::write(&path, format!("trusted_proxies = [\"::1/128\", {bad:?}]\n")).unwrap();
        let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(err.key, "trusted_proxies[1]", "{bad}");
        assert!(err.problem.contains(bad), "{err}");
    }
    assert_eq!(
        IpNetwork::parse("::ffff:10.0.0.0/104").unwrap(),
        IpNetwork::parse("10.0.0.0/8").unwrap()
    );
    assert!(
        IpNetwork::parse("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.1".parse().unwrap())
    );
}

//! The schema, per backend, embedded in the binary so `postbote` runs from any folder.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(version, description, PostgreSQL SQL, SQLite SQL)`, in order.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "signup",
        include_str!("../../migrations/postgres/0001_signup.sql"),
        include_str!("../../migrations/sqlite/0001_signup.sql"),
    ),
    (
        2,
        "digests",
        include_str!("../../migrations/postgres/0002_digests.sql"),
        include_str!("../../migrations/sqlite/0002_digests.sql"),
    ),
    (
        3,
        "hygiene",
        include_str!("../../migrations/postgres/0003_hygiene.sql"),
        include_str!("../../migrations/sqlite/0003_hygiene.sql"),
    ),
    (
        4,
        "feeds",
        include_str!("../../migrations/postgres/0004_feeds.sql"),
        include_str!("../../migrations/sqlite/0004_feeds.sql"),
    ),
    (
        5,
        "inbound trust",
        include_str!("../../migrations/postgres/0005_inbound_trust.sql"),
        include_str!("../../migrations/sqlite/0005_inbound_trust.sql"),
    ),
    (
        6,
        "signup limits",
        include_str!("../../migrations/postgres/0006_signup_limits.sql"),
        include_str!("../../migrations/sqlite/0006_signup_limits.sql"),
    ),
    (
        7,
        "leases and counters",
        include_str!("../../migrations/postgres/0007_leases_and_counters.sql"),
        include_str!("../../migrations/sqlite/0007_leases_and_counters.sql"),
    ),
    (
        8,
        "item arrivals",
        include_str!("../../migrations/postgres/0008_item_arrivals.sql"),
        include_str!("../../migrations/sqlite/0008_item_arrivals.sql"),
    ),
    (
        9,
        "shared digest bodies",
        include_str!("../../migrations/postgres/0009_shared_digest_bodies.sql"),
        include_str!("../../migrations/sqlite/0009_shared_digest_bodies.sql"),
    ),
    (
        10,
        "console sessions",
        include_str!("../../migrations/postgres/0010_console_sessions.sql"),
        include_str!("../../migrations/sqlite/0010_console_sessions.sql"),
    ),
    (
        11,
        "queues in order",
        include_str!("../../migrations/postgres/0011_queues_in_order.sql"),
        include_str!("../../migrations/sqlite/0011_queues_in_order.sql"),
    ),
    (
        12,
        "webhooks",
        include_str!("../../migrations/postgres/0012_webhooks.sql"),
        include_str!("../../migrations/sqlite/0012_webhooks.sql"),
    ),
    (
        13,
        "hidden items",
        include_str!("../../migrations/postgres/0013_hidden_items.sql"),
        include_str!("../../migrations/sqlite/0013_hidden_items.sql"),
    ),
    (
        14,
        "pause",
        include_str!("../../migrations/postgres/0014_pause.sql"),
        include_str!("../../migrations/sqlite/0014_pause.sql"),
    ),
    (
        15,
        "lean queue",
        include_str!("../../migrations/postgres/0015_lean_queue.sql"),
        include_str!("../../migrations/sqlite/0015_lean_queue.sql"),
    ),
    (
        16,
        "last slot",
        include_str!("../../migrations/postgres/0016_last_slot.sql"),
        include_str!("../../migrations/sqlite/0016_last_slot.sql"),
    ),
    (
        17,
        "bodies by age",
        include_str!("../../migrations/postgres/0017_bodies_by_age.sql"),
        include_str!("../../migrations/sqlite/0017_bodies_by_age.sql"),
    ),
    (
        18,
        "mail without reader key",
        include_str!("../../migrations/postgres/0018_mail_without_reader_key.sql"),
        include_str!("../../migrations/sqlite/0018_mail_without_reader_key.sql"),
    ),
    (
        19,
        "no digest log",
        include_str!("../../migrations/postgres/0019_no_digest_log.sql"),
        include_str!("../../migrations/sqlite/0019_no_digest_log.sql"),
    ),
    (
        20,
        "mail log",
        include_str!("../../migrations/postgres/0020_mail_log.sql"),
        include_str!("../../migrations/sqlite/0020_mail_log.sql"),
    ),
];

fn migrator(pick: fn(&(i64, &str, &'static str, &'static str)) -> &'static str) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|m| {
            Migration::new(
                m.0,
                Cow::Borrowed(m.1),
                MigrationType::Simple,
                SqlStr::from_static(pick(m)),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The PostgreSQL migrations (`migrations/postgres/`).
pub fn postgres() -> Migrator {
    migrator(|m| m.2)
}

/// The SQLite migrations (`migrations/sqlite/`).
pub fn sqlite() -> Migrator {
    migrator(|m| m.3)
}

//! postbote: a self-hosted topic-newsletter daemon.
//!
//! # Layout
//! - [`config`]: the TOML file and `POSTBOTE_*` variables, parsed once into types;
//!   one file per section (`config/http.rs`, `config/delivery.rs`, …), each with its
//!   settings type and its `resolve`.
//! - [`domain`]: values that cannot be invalid (`EmailAddress`, `TopicSlug`,
//!   `SubscriberStatus`, `FeedSchedule`, `HttpUrl`, …), parsed at the edge, carried
//!   as types and read back from rows as types (a stored value that does not parse
//!   is an error naming the row).
//! - [`store`]: the only module with SQL, one file per aggregate (`subscribers/`,
//!   `items`, `digest_log`, `digest_bodies`, `mail_queue`, …); PostgreSQL and SQLite
//!   behind one [`store::Store`], long transactions as named steps on one `Tx`.
//! - [`digest`]: the scheduling pass: who is due, what their digest lists; each
//!   distinct content rendered and stored once.
//! - [`mail`]: templates, building messages, the delivery workers (a digest is
//!   assembled from its stored body and the reader's part at send time) and the
//!   transports.
//! - [`web`]: the public pages (sign-up, confirm, preferences, unsubscribe, item
//!   pages, "send me my link"), the admin API and the router; one error path for pages (`web::error`).
//! - [`inbound`]: `postbote inbound`: bounces, complaints, unsubscribe replies and
//!   mailed-in press releases.
//! - [`feeds`]: polling RSS, Atom and JSON Feed sources into items.
//! - [`import`]: `postbote import`: bringing an existing list.
//! - [`webhooks`]: delivering the signed webhooks the store queued with each
//!   confirmation, unsubscribe, bounce, complaint and erasure.
//! - [`links`]: the public links (confirm, unsubscribe, preferences, "send me my
//!   link", item pages, archive, a digest's browser view)
//!   and the key that signs them, shared by `web` and `mail`.
//! - [`services`]: opening templates, database and composer, once for every command.
//! - [`app`]: wires it all together; [`app::App`] binds its own listener so tests run
//!   the real thing on port 0.
//! - [`clock`]: where "now" comes from, so tests can move time.
//! - [`demo`]: example content for `serve --demo`.
//!
//! Dependencies point one way: `domain` and `clock` import nothing of ours, `store`
//! imports `domain`, `config` imports `domain` and `store::DatabaseUrl`; the rest
//! build on those. `docs/ARCHITECTURE.md` walks a sign-up and a digest through
//! these modules.

pub mod app;
pub mod clock;
pub mod config;
pub mod demo;
pub mod digest;
pub mod domain;
pub mod feeds;
pub mod import;
pub mod inbound;
pub mod links;
pub mod mail;
pub mod services;
pub mod store;
pub mod web;
pub mod webhooks;

//! postbote: a self-hosted topic-newsletter daemon.
//!
//! # Layout
//! - [`config`]: the TOML file and `POSTBOTE_*` variables, parsed once into types.
//! - [`domain`]: values that cannot be invalid (`EmailAddress`, `TopicSlug`, …).
//! - [`store`]: the only module with SQL; PostgreSQL and SQLite behind one [`store::Store`].
//! - [`digest`]: the scheduling pass: who is due, what their digest lists.
//! - [`mail`]: templates, building messages, the delivery workers and transports.
//! - [`web`]: the public pages (sign-up, confirm, preferences, unsubscribe, item
//!   pages), the admin API and the router.
//! - [`inbound`]: `postbote inbound`: bounces, complaints, unsubscribe replies and
//!   mailed-in press releases.
//! - [`feeds`]: polling RSS, Atom and JSON Feed sources into items.
//! - [`import`]: `postbote import`: bringing an existing list.
//! - [`links`]: the public links (confirm, unsubscribe, preferences, item pages)
//!   and the key that signs them, shared by `web` and `mail`.
//! - [`services`]: opening templates, database and composer, once for every command.
//! - [`app`]: wires it all together; [`app::App`] binds its own listener so tests run
//!   the real thing on port 0.
//! - [`clock`]: where "now" comes from, so tests can move time.
//! - [`demo`]: example content for `serve --demo`.
//!
//! `docs/ARCHITECTURE.md` walks a sign-up through these modules.

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

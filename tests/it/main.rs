//! The integration tests: one binary (linking the crate once, not once per file),
//! one module per area. Each test starts what it needs against real parts: its own
//! PostgreSQL or SQLite database, Postfix's `smtp-sink` or a private Postfix, a feed
//! server, the `postbote` binary. `harness` holds what they share.
//!
//! Run one area with `cargo test --test it signup::`, one test by its name.

#[macro_use]
mod harness;

mod archive;
mod bad_input;
mod browser;
mod cli;
mod console;
mod console_browser;
mod console_browser_content;
mod console_content;
mod console_preview;
mod contrib;
mod digests;
mod durability;
mod fanout;
mod feeds;
mod hygiene;
mod inbound;
mod link;
mod mail_html;
mod pause;
mod postfix_bounce;
mod public_browser;
mod signup;
mod site;
mod store_contract;
mod tls_relay;
mod webhooks;

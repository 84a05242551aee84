//! Mail: the template set ([`templates`]), building messages ([`compose`]),
//! transports ([`transport`]: outbox folder or SMTP) and the delivery workers
//! that drain the durable queue ([`delivery`]).

pub mod compose;
pub mod delivery;
pub mod dkim;
pub mod handoff;

pub mod smtp;
pub mod templates;
pub mod transport;

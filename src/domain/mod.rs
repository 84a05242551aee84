//! Types that cannot hold invalid values: parsed once at the edge (form, JSON,
//! CSV, config), carried as types everywhere after that.

mod email;
mod feed_schedule;
mod http_url;
mod schedule;
mod status;
mod token;
mod topic;

pub use email::{EmailAddress, EmailError, ascii_address, ascii_domain};
pub use feed_schedule::{FeedSchedule, FeedScheduleError};
pub use http_url::{HttpUrl, HttpUrlError};
pub use schedule::{
    DeliverySchedule, DeliveryTime, DeliveryTimeError, Locale, LocaleError, TimeZone,
    TimeZoneError, Weekdays,
};
pub use status::{MailEventKind, SubmissionStatus, SubscriberStatus, UnknownName};
pub use token::{LinkKey, ManageToken, Token, TokenHash, hex};
pub use topic::{SlugError, TopicSlug};

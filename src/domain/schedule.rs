//! When and in which language a reader wants their mail.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone as _, Timelike,
    Utc,
};
use serde::{Deserialize, Serialize};

/// A local time of day, minutes precision, written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTime(NaiveTime);

/// Why a string is not a [`DeliveryTime`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a time of day written HH:MM, from 00:00 to 23:59")]
pub struct DeliveryTimeError;

impl DeliveryTime {
    /// # Errors
    /// [`DeliveryTimeError`] unless the text is `HH:MM` with a real time of day.
    pub fn parse(s: &str) -> Result<Self, DeliveryTimeError> {
        let s = s.trim();
        let (h, m) = s.split_once(':').ok_or(DeliveryTimeError)?;
        let digits = |p: &str| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || m.len() != 2 || !digits(m) {
            return Err(DeliveryTimeError);
        }
        let (h, m) = (
            h.parse().map_err(|_| DeliveryTimeError)?,
            m.parse().map_err(|_| DeliveryTimeError)?,
        );
        NaiveTime::from_hms_opt(h, m, 0)
            .map(Self)
            .ok_or(DeliveryTimeError)
    }

    /// The time of day.
    pub fn time(self) -> NaiveTime {
        self.0
    }
}

impl fmt::Display for DeliveryTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%H:%M"))
    }
}

/// Serialised as its text (`07:30`), as it is stored.
impl Serialize for DeliveryTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IANA time zone such as `Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(chrono_tz::Tz);

/// Why a string is not a [`TimeZone`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an IANA time zone name such as Europe/Berlin")]
pub struct TimeZoneError;

impl TimeZone {
    /// # Errors
    /// [`TimeZoneError`] unless the text names a zone of the IANA database.
    pub fn parse(s: &str) -> Result<Self, TimeZoneError> {
        chrono_tz::Tz::from_str(s.trim())
            .map(Self)
            .map_err(|_| TimeZoneError)
    }

    /// The zone, for date arithmetic.
    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// Serialised as its text (`Europe/Berlin`), as it is stored.
impl Serialize for TimeZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The languages postbote speaks; German first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    /// German, the default.
    #[default]
    De,
    /// English.
    En,
}

/// Why a string is not a [`Locale`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of: de, en")]
pub struct LocaleError;

impl Locale {
    /// Every supported locale, the default first.
    pub const ALL: [Locale; 2] = [Locale::De, Locale::En];

    /// # Errors
    /// [`LocaleError`] for anything but `de` or `en` (a region such as `de-AT` is accepted).
    pub fn parse(s: &str) -> Result<Self, LocaleError> {
        let lang = s.trim().split(['-', '_']).next().unwrap_or_default();
        match lang.to_ascii_lowercase().as_str() {
            "de" => Ok(Self::De),
            "en" => Ok(Self::En),
            _ => Err(LocaleError),
        }
    }

    /// The two-letter code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::De => "de",
            Self::En => "en",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The days of the week a reader wants mail on, as a bit set (bit 0 = Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weekdays(u8);

impl Weekdays {
    /// Every day of the week: the default.
    pub const EVERY_DAY: Weekdays = Weekdays(0b111_1111);

    /// # Errors
    /// `None` when the bits name no day or more than seven.
    pub fn from_bits(bits: i64) -> Option<Self> {
        (1..=0b111_1111).contains(&bits).then_some(Self(bits as u8))
    }

    /// The bit set, for storage.
    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }

    /// The days as cron day-of-week names, e.g. `Mon,Tue`.
    pub fn names(self) -> Vec<&'static str> {
        const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        (0..7)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| NAMES[i])
            .collect()
    }
}

impl Default for Weekdays {
    fn default() -> Self {
        Self::EVERY_DAY
    }
}

/// When a reader wants their digest: a local time on some weekdays, in their zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliverySchedule {
    /// Local time of day.
    pub time: DeliveryTime,
    /// The reader's zone.
    pub timezone: TimeZone,
    /// The days they want mail on.
    pub weekdays: Weekdays,
}

impl DeliverySchedule {
    /// The schedule as a `cron` expression (seconds first), e.g. `0 30 7 * * Mon,Fri *`.
    pub fn cron_expression(&self) -> String {
        let t = self.time.time();
        format!(
            "0 {} {} * * {} *",
            t.minute(),
            t.hour(),
            self.weekdays.names().join(",")
        )
    }

    /// The first slot strictly after `after`.
    ///
    /// The cron expression is evaluated on the reader's wall clock, which has exactly
    /// one 07:30 per day; each wall-clock slot is then mapped to exactly one instant:
    /// a time that occurs twice (autumn) is taken at its first occurrence, a time that
    /// does not exist (spring) is moved forward by the length of the gap (02:30 →
    /// 03:30). So DST never yields zero or two digests on one day.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let tz = self.timezone.tz();
        let schedule: cron::Schedule = self
            .cron_expression()
            .parse()
            .expect("a generated cron expression parses");
        // The wall clock, as a naive calendar (labelled UTC only to iterate on it).
        let wall = Utc.from_utc_datetime(&after.with_timezone(&tz).naive_local());
        schedule
            .after(&wall)
            .map(|slot| wall_to_instant(tz, slot.naive_utc()))
            .find(|instant| *instant > after)
            .expect("a daily schedule has a next slot")
    }
}

impl DeliverySchedule {
    /// The reader's local date at `at`.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.timezone.tz()).date_naive()
    }

    /// Whether a reader who paused until `paused_until` gets no digest at `at`: a
    /// pause covers their local dates up to and including that date.
    pub fn paused_at(&self, at: DateTime<Utc>, paused_until: Option<NaiveDate>) -> bool {
        paused_until.is_some_and(|until| self.local_date(at) <= until)
    }

    /// The first slot strictly after `after` that is not paused: like a weekday
    /// that is off, the days up to and including `paused_until` are skipped.
    pub fn next_after_pause(
        &self,
        after: DateTime<Utc>,
        paused_until: Option<NaiveDate>,
    ) -> DateTime<Utc> {
        let next = self.next_after(after);
        let Some(day_after) = paused_until.and_then(|until| until.succ_opt()) else {
            return next;
        };
        if !self.paused_at(next, paused_until) {
            return next;
        }
        // The first instant of the day after the pause, less a second: slots are
        // whole minutes, so one at local midnight is still found.
        let resume = wall_to_instant(self.timezone.tz(), day_after.and_time(NaiveTime::MIN))
            - chrono::Duration::seconds(1);
        self.next_after(resume.max(after))
    }
}

/// The instant a wall-clock time of `tz` stands for (see [`DeliverySchedule::next_after`]).
fn wall_to_instant(tz: chrono_tz::Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: read the wall time with the offset in force before the jump.
            let before = tz
                .offset_from_utc_datetime(&(wall - chrono::Duration::hours(12)))
                .fix();
            Utc.from_utc_datetime(&(wall - before))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(time: &str, zone: &str) -> DeliverySchedule {
        DeliverySchedule {
            time: DeliveryTime::parse(time).unwrap(),
            timezone: TimeZone::parse(zone).unwrap(),
            weekdays: Weekdays::EVERY_DAY,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Every slot from `from` to `to`.
    fn slots(s: &DeliverySchedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (mut at, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        loop {
            at = s.next_after(at);
            if at > end {
                return out;
            }
            out.push(at);
        }
    }

    #[test]
    fn slots_are_at_local_time_in_each_zone() {
        let at = utc("2027-01-15T00:00:00Z");
        assert_eq!(
            schedule("07:00", "Europe/Berlin").next_after(at),
            utc("2027-01-15T06:00:00Z")
        );
        assert_eq!(
            schedule("07:00", "America/New_York").next_after(at),
            utc("2027-01-15T12:00:00Z")
        );
        assert_eq!(
            schedule("07:00", "Asia/Tokyo").next_after(at),
            utc("2027-01-15T22:00:00Z")
        );
        assert_eq!(
            schedule("07:00", "Europe/Berlin").next_after(utc("2027-01-15T06:00:00Z")),
            utc("2027-01-16T06:00:00Z")
        );
    }

    #[test]
    fn a_skipped_local_time_still_gets_one_slot_that_day() {
        // 2027-03-28: Berlin jumps from 02:00 to 03:00.
        let s = schedule("02:30", "Europe/Berlin");
        let got = slots(&s, "2027-03-27T00:00:00Z", "2027-03-29T23:59:00Z");
        assert_eq!(
            got,
            [
                utc("2027-03-27T01:30:00Z"),
                utc("2027-03-28T01:30:00Z"),
                utc("2027-03-29T00:30:00Z")
            ]
        );
    }

    #[test]
    fn a_repeated_local_time_gets_one_slot_that_day() {
        // 2027-10-31: Berlin goes from 03:00 back to 02:00; 02:30 happens twice.
        let s = schedule("02:30", "Europe/Berlin");
        let got = slots(&s, "2027-10-30T00:00:00Z", "2027-11-01T23:59:00Z");
        assert_eq!(
            got,
            [
                utc("2027-10-30T00:30:00Z"),
                utc("2027-10-31T00:30:00Z"),
                utc("2027-11-01T01:30:00Z")
            ]
        );
        // Asked between the two occurrences, the next slot is the next day's.
        assert_eq!(
            s.next_after(utc("2027-10-31T01:15:00Z")),
            utc("2027-11-01T01:30:00Z")
        );
    }

    #[test]
    fn weekdays_are_respected() {
        let s = DeliverySchedule {
            weekdays: Weekdays::from_bits(0b1).unwrap(),
            ..schedule("08:00", "Europe/Berlin")
        };
        assert_eq!(s.cron_expression(), "0 0 8 * * Mon *");
        // 2027-01-15 is a Friday; the next Monday is the 18th.
        assert_eq!(
            s.next_after(utc("2027-01-15T00:00:00Z")),
            utc("2027-01-18T07:00:00Z")
        );
    }

    #[test]
    fn delivery_times_are_hh_mm() {
        assert_eq!(DeliveryTime::parse("07:00").unwrap().to_string(), "07:00");
        assert_eq!(DeliveryTime::parse("7:05").unwrap().to_string(), "07:05");
        for bad in [
            "24:00", "12:60", "12", "12:5", "ab:cd", "", "-1:00", "12:00:00",
        ] {
            assert!(DeliveryTime::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert_eq!(
            TimeZone::parse("Europe/Berlin").unwrap().to_string(),
            "Europe/Berlin"
        );
        assert!(TimeZone::parse("Mars/Olympus").is_err());
        assert!(TimeZone::parse("").is_err());
    }

    #[test]
    fn locales_accept_regions() {
        assert_eq!(Locale::parse("de-AT"), Ok(Locale::De));
        assert_eq!(Locale::parse("EN"), Ok(Locale::En));
        assert!(Locale::parse("fr").is_err());
    }

    #[test]
    fn weekdays_name_their_days() {
        assert_eq!(Weekdays::EVERY_DAY.names().len(), 7);
        assert_eq!(Weekdays::from_bits(0b101).unwrap().names(), ["Mon", "Wed"]);
        assert!(Weekdays::from_bits(0).is_none());
        assert!(Weekdays::from_bits(128).is_none());
    }

    #[test]
    fn a_pause_skips_its_days_up_to_and_including_the_last() {
        let s = schedule("00:00", "Europe/Berlin");
        let until = NaiveDate::from_ymd_opt(2027, 5, 10);
        // Midnight Berlin on 11 May (22:00 UTC on the 10th) is the first slot after.
        let next = s.next_after_pause(utc("2027-05-05T12:00:00Z"), until);
        assert_eq!(next, utc("2027-05-10T22:00:00Z"));
        assert!(s.paused_at(utc("2027-05-10T21:59:00Z"), until));
        assert!(!s.paused_at(next, until));
        // Not paused, or the pause is over: the ordinary next slot.
        let after = utc("2027-05-12T12:00:00Z");
        assert_eq!(s.next_after_pause(after, until), s.next_after(after));
        assert_eq!(s.next_after_pause(after, None), s.next_after(after));
    }
}

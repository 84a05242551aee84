//! The weekday checkboxes of the sign-up and the preferences form (the partial
//! `pages/weekdays`): the values a form posts, reading the ticked ones, and what
//! the partial shows.

use serde_json::{Value, json};

/// The `weekdays` values a form posts, Monday first: bit `i` of
/// [`crate::domain::Weekdays`] is `VALUES[i]`.
pub const VALUES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The ticked days as bits (bit 0 = Monday); values that name no day are
/// ignored, so nothing ticked (or only unknown values) is 0.
pub fn bits<'a>(ticked: impl IntoIterator<Item = &'a str>) -> i64 {
    ticked
        .into_iter()
        .filter_map(|d| VALUES.iter().position(|w| *w == d))
        .fold(0, |b, i| b | (1 << i))
}

/// The partial's `weekdays`: each day's value, label (from the page texts `t`,
/// `weekday_<value>`) and whether it is ticked in `bits`.
pub fn checkboxes(t: &Value, bits: i64) -> Vec<Value> {
    VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"value": v, "label": t[format!("weekday_{v}")], "checked": bits & (1 << i) != 0})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Weekdays;

    #[test]
    fn ticked_days_are_the_bits_of_the_domain_type() {
        assert_eq!(bits(VALUES), Weekdays::EVERY_DAY.bits());
        assert_eq!(bits(["mon", "sun", "mon", "funday"]), 0b100_0001);
        assert_eq!(bits(["", "x"]), 0);
        let shown = checkboxes(&json!({"weekday_tue": "Dienstag"}), 0b10);
        assert_eq!(shown[1]["label"], "Dienstag");
        assert_eq!(shown.iter().filter(|d| d["checked"] == true).count(), 1);
    }
}

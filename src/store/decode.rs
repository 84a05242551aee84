//! Reading stored text back into domain types. A value that does not parse (a
//! damaged or hand-edited row) is a [`CorruptValue`] naming the table, the row's id
//! and the column, never a default: an unknown stored locale is an error, not
//! German.

use std::fmt;

use super::StoreError;
use crate::domain::{DeliverySchedule, DeliveryTime, TimeZone, Weekdays};

/// A stored value that does not parse, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table} row {id}: the stored {column}{shown} does not parse: {problem}")]
pub struct CorruptValue {
    /// The table.
    pub table: &'static str,
    /// The row's id.
    pub id: i64,
    /// The column.
    pub column: &'static str,
    /// ` "<value>"`, or nothing for an address (personal data stays out of logs).
    shown: String,
    /// What the parser said.
    problem: String,
}

/// One stored row being read: where a value that does not parse is reported.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredRow {
    table: &'static str,
    id: i64,
}

impl StoredRow {
    /// Row `id` of `table`.
    pub(super) fn new(table: &'static str, id: i64) -> Self {
        Self { table, id }
    }

    /// A row of `subscribers`.
    pub(super) fn subscriber(id: i64) -> Self {
        Self::new("subscribers", id)
    }

    /// Parses `column`'s stored `value`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the row when `parse` refuses the value.
    pub(super) fn parse<V, T, E>(
        self,
        column: &'static str,
        value: V,
        parse: impl FnOnce(V) -> Result<T, E>,
    ) -> Result<T, StoreError>
    where
        V: fmt::Display + Copy,
        E: fmt::Display,
    {
        parse(value).map_err(|e| {
            StoreError::Corrupt(CorruptValue {
                table: self.table,
                id: self.id,
                column,
                shown: if column == "email" {
                    String::new()
                } else {
                    format!(" {:?}", value.to_string())
                },
                problem: e.to_string(),
            })
        })
    }

    /// A reader's schedule from its three stored columns.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the row and the first column that does not parse.
    pub(super) fn schedule(
        self,
        delivery_time: &str,
        timezone: &str,
        weekdays: i64,
    ) -> Result<DeliverySchedule, StoreError> {
        Ok(DeliverySchedule {
            time: self.parse("delivery_time", delivery_time, DeliveryTime::parse)?,
            timezone: self.parse("timezone", timezone, TimeZone::parse)?,
            weekdays: self.parse("weekdays", weekdays, |bits| {
                Weekdays::from_bits(bits).ok_or("must name one to seven days")
            })?,
        })
    }
}

//! Field-level validation errors, the shape the admin API answers a 400 with: each offending
//! field (`"name"`, `"access[0].table"`, `"access[1].row_filter"`) maps to its messages.

use std::collections::BTreeMap;

/// Validation messages keyed by the path of the field they concern, in a stable order.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Adds `message` under `field`.
pub(crate) fn push(errors: &mut FieldErrors, field: impl Into<String>, message: impl Into<String>) {
    errors.entry(field.into()).or_default().push(message.into());
}

/// `Ok(())` when nothing was reported, else the errors.
pub(crate) fn into_result(errors: FieldErrors) -> Result<(), FieldErrors> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Does `s` contain a control character (C0, DEL or C1)?
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

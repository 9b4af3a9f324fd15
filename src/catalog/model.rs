//! The catalog's stored shapes (tables `products`, `offers`, `price_history`), their
//! invariants, and the input limits every write path checks before storing.

use sea_orm::DerivePartialModel;

use super::entity::{offer, price_history, product};

use crate::error::AppError;

/// Longest product name, in characters.
pub const NAME_MAX: usize = 200;
/// Longest product description, in characters.
pub const DESCRIPTION_MAX: usize = 10_000;
/// Longest sku, in characters.
pub const SKU_MAX: usize = 100;
/// Largest `attributes` object, in bytes of JSON text.
pub const ATTRIBUTES_MAX_BYTES: usize = 64 * 1024;

/// The job that registers one product with the offers service.
pub const REGISTER_JOB: &str = "catalog.register";

/// Where a product stands with the offers service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Not registered yet: the registration job is queued or retrying.
    Pending,
    /// The offers service knows the product; its offers are synced.
    Registered,
    /// The service refused the product for good, or retries ran out.
    Failed,
}

impl Registration {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Registered => "registered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(stored: &str) -> Self {
        match stored {
            "registered" => Self::Registered,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// A product as stored.
pub type ProductRow = product::Model;

/// An offer currently listed by the offers service for one of our products.
pub type OfferRow = offer::Model;

/// One price change of one offer; `price` is `None` when the offer was withdrawn.
#[derive(Debug, Clone, DerivePartialModel)]
#[sea_orm(entity = "price_history::Entity")]
pub struct HistoryRow {
    pub product_id: i64,
    pub offer_source_id: String,
    pub price: Option<i64>,
    pub recorded_at: i64,
}

/// A product field the catalog refuses, and why, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

impl From<InvalidField> for AppError {
    fn from(invalid: InvalidField) -> Self {
        AppError::bad_input(invalid.to_string())
    }
}

/// Text the database can store ([`crate::db::unstorable_text`]).
pub fn no_nul(field: &'static str, value: &str) -> Result<(), InvalidField> {
    match crate::db::unstorable_text(value) {
        Some(reason) => Err(InvalidField::new(field, reason)),
        None => Ok(()),
    }
}

/// Checks a name; returns it trimmed.
pub fn valid_name(name: &str) -> Result<String, InvalidField> {
    no_nul("name", name)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(InvalidField::new("name", "must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(InvalidField::new("name", format!("must be at most {NAME_MAX} characters")));
    }
    Ok(name.to_string())
}

pub fn valid_description(description: &str) -> Result<String, InvalidField> {
    no_nul("description", description)?;
    if description.chars().count() > DESCRIPTION_MAX {
        return Err(InvalidField::new("description", format!("must be at most {DESCRIPTION_MAX} characters")));
    }
    Ok(description.to_string())
}

/// Checks a sku; returns it trimmed. Skus are identifiers: no control characters.
pub fn valid_sku(sku: &str) -> Result<String, InvalidField> {
    let sku = sku.trim();
    if sku.is_empty() {
        return Err(InvalidField::new("sku", "must not be empty"));
    }
    if sku.chars().count() > SKU_MAX {
        return Err(InvalidField::new("sku", format!("must be at most {SKU_MAX} characters")));
    }
    if sku.chars().any(char::is_control) {
        return Err(InvalidField::new("sku", "must not contain control characters"));
    }
    Ok(sku.to_string())
}

/// Checks `attributes` (a JSON object, bounded) and returns its JSON text.
pub fn valid_attributes(attributes: &serde_json::Value) -> Result<String, InvalidField> {
    if !attributes.is_object() {
        return Err(InvalidField::new("attributes", "must be a JSON object"));
    }
    if holds_nul(attributes) {
        return Err(InvalidField::new("attributes", "must not contain the NUL character (\\u0000) in a key or string"));
    }
    let text = attributes.to_string();
    if text.len() > ATTRIBUTES_MAX_BYTES {
        return Err(InvalidField::new("attributes", format!("must be at most {ATTRIBUTES_MAX_BYTES} bytes of JSON")));
    }
    Ok(text)
}

/// Whether a key or string anywhere in `value` holds a NUL.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(values) => values.iter().any(holds_nul),
        Value::Object(members) => members.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_in_characters() {
        assert!(valid_name("").is_err());
        assert!(valid_name("   ").is_err());
        assert_eq!(valid_name("  mesa ").as_deref(), Ok("mesa"));
        assert!(valid_name(&"ž".repeat(NAME_MAX)).is_ok());
        assert!(valid_name(&"ž".repeat(NAME_MAX + 1)).is_err());
        assert!(valid_description(&"x".repeat(DESCRIPTION_MAX + 1)).is_err());
        assert!(valid_sku("a\u{0}b").is_err());
        assert!(valid_sku(&"s".repeat(SKU_MAX + 1)).is_err());
        assert!(valid_attributes(&serde_json::json!([1])).is_err());
        assert!(valid_attributes(&serde_json::json!({"color": "red"})).is_ok());
        assert_eq!(valid_name("a\u{0}b").map_err(|invalid| invalid.field), Err("name"));
        assert_eq!(valid_description("\u{0}").map_err(|invalid| invalid.field), Err("description"));
        assert!(valid_attributes(&serde_json::json!({"tags": ["x", "a\u{0}"]})).is_err());
        assert!(valid_attributes(&serde_json::json!({"k\u{0}": 1})).is_err());
    }
}

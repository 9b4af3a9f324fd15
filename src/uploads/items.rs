//! One upload item's outcome: its errors, each named by field (from the scanner's item
//! issues and the catalog's checks), and what of it is ingested under the upload's
//! [`ErrorPolicy`]. The edge (while the body streams in) and ingestion use the same rules,
//! so what `POST /v1/products` reports is what ingestion does.

use std::fmt;

use serde::{Deserialize, Deserializer, de};
use serde_json::{Map, Value, value::RawValue};

use super::{
    model::{ErrorPolicy, ItemError},
    scan::{ErrorKind, ItemIssue},
};
use crate::catalog::{self, ProductUpsert};

/// One error of an item, before it is placed (index) in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// As named in the body: `id`, `name`, `description`, another key; `attributes` for
    /// the other fields taken together.
    pub field: String,
    pub reason: String,
}

/// An item's outcome.
#[derive(Debug)]
pub struct Checked {
    /// What is ingested of it; `None`: the item is skipped.
    pub upsert: Option<ProductUpsert>,
    /// Its `id` as uploaded ("" when it has none).
    pub sku: String,
    pub errors: Vec<FieldError>,
}

impl Checked {
    /// Its errors as reported on the upload.
    pub fn item_errors(&self, index: u64) -> impl Iterator<Item = ItemError> + '_ {
        let kept = self.upsert.is_some();
        self.errors.iter().map(move |error| ItemError {
            index,
            sku: self.sku.clone(),
            field: error.field.clone(),
            reason: error.reason.clone(),
            kept,
        })
    }
}

/// Whether an item without a valid `field` cannot be ingested at all.
fn required(field: &str) -> bool {
    matches!(field, "id" | "name" | "")
}

/// The item at `item` (its bytes, from its `{` at body offset `start`) with the scanner's
/// `issues` about it: decodes what the policy keeps and applies the catalog's checks.
/// `Err` only when the bytes do not decode, which the scan rules out (a spool that changed).
pub fn check(item: &[u8], start: u64, issues: &[ItemIssue], policy: ErrorPolicy) -> Result<Checked, String> {
    let (sku, mut errors, fields) = if issues.is_empty() {
        // The common case, at full speed: one decode.
        let fields: Map<String, Value> = serde_json::from_slice(item).map_err(|error| error.to_string())?;
        (String::new(), Vec::new(), fields)
    } else {
        let members = Members::decode(item)?;
        let sku = members.sku();
        let keys: Vec<String> = issues.iter().map(|issue| issue_key(item, start, issue)).collect();
        let errors = field_errors(&keys, issues);
        if policy != ErrorPolicy::IgnoreFailed || errors.iter().any(|error| required(&error.field)) {
            return Ok(Checked { upsert: None, sku, errors });
        }
        // IGNORE_FAILED: the members without an issue (the scanner flags every member it
        // refuses, so these decode).
        let mut fields = Map::new();
        for (key, raw) in members.0 {
            if keys.contains(&key) {
                continue;
            }
            let value = serde_json::from_str(raw.get()).map_err(|error| format!("`{key}`: {error}"))?;
            fields.insert(key, value);
        }
        (sku, errors, fields)
    };
    let mut upsert = to_upsert(fields);
    let sku = if sku.is_empty() { upsert.sku.clone() } else { sku };
    // The catalog's own checks (what the scanner cannot see: blanks beyond ASCII, the size
    // of the other fields as stored); IGNORE_FAILED drops an invalid optional field.
    loop {
        let Err(invalid) = catalog::validate_upsert(&upsert) else {
            return Ok(Checked { upsert: Some(upsert), sku, errors });
        };
        let invalid = invalid.invalid_field();
        let field = if invalid.field == "sku" { "id" } else { invalid.field };
        errors.push(FieldError { field: field.to_string(), reason: invalid.reason.clone() });
        match field {
            "description" if policy == ErrorPolicy::IgnoreFailed => upsert.description = None,
            "attributes" if policy == ErrorPolicy::IgnoreFailed => upsert.attributes = None,
            _ => return Ok(Checked { upsert: None, sku, errors }),
        }
    }
}

/// The errors the scanner found in an item, at the edge, and what the policy will make of
/// the item (its errors' `kept`), without decoding the rest of it.
pub fn describe(item: &[u8], start: u64, index: u64, issues: &[ItemIssue], policy: ErrorPolicy) -> Vec<ItemError> {
    let sku = Members::decode(item).map(|members| members.sku()).unwrap_or_default();
    let keys: Vec<String> = issues.iter().map(|issue| issue_key(item, start, issue)).collect();
    let errors = field_errors(&keys, issues);
    let kept = policy == ErrorPolicy::IgnoreFailed && !errors.iter().any(|error| required(&error.field));
    errors
        .into_iter()
        .map(|error| ItemError { index, sku: sku.clone(), field: error.field, reason: error.reason, kept })
        .collect()
}

/// The issues as errors of the fields named by `keys` (theirs, from [`issue_key`]).
fn field_errors(keys: &[String], issues: &[ItemIssue]) -> Vec<FieldError> {
    let shown = |key: &String| {
        // A key with control characters (a NUL) is shown escaped.
        if key.chars().any(char::is_control) { key.escape_debug().to_string() } else { key.clone() }
    };
    keys.iter().zip(issues).map(|(key, issue)| FieldError { field: shown(key), reason: issue.kind.detail() }).collect()
}

/// The key an issue is about: of the member it lies in, decoded, or the missing field.
fn issue_key(item: &[u8], start: u64, issue: &ItemIssue) -> String {
    if let Some(member) = issue.member
        && let Some(key_bytes) = usize::try_from(member.saturating_sub(start)).ok().and_then(|at| item.get(at..))
        && let Ok(key) = String::deserialize(&mut serde_json::Deserializer::from_slice(key_bytes))
    {
        return key;
    }
    match &issue.kind {
        ErrorKind::Missing { field, .. } | ErrorKind::Repeated { field, .. } => field.as_str().to_string(),
        _ => String::new(),
    }
}

/// An item's members in body order, each value as raw JSON, repeated keys kept: numbers
/// beyond f64's range stay text, so the item decodes whatever its values hold.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    fn decode(item: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(item).map_err(|error| error.to_string())
    }

    /// The item's first `id` as uploaded: a string as is, a number as written.
    fn sku(&self) -> String {
        let Some((_, raw)) = self.0.iter().find(|(key, _)| key == "id") else {
            return String::new();
        };
        match serde_json::from_str::<String>(raw.get()) {
            Ok(text) => text,
            Err(_) => raw.get().to_string(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An item as the catalog's upsert: `id` → sku, `name`, a string `description`, and every
/// other field (a non-string description included) in `attributes`.
pub fn to_upsert(mut fields: Map<String, Value>) -> ProductUpsert {
    let sku = match fields.remove("id") {
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let name = match fields.remove("name") {
        Some(Value::String(text)) => text,
        _ => String::new(),
    };
    let description = match fields.remove("description") {
        Some(Value::String(text)) => Some(text),
        Some(Value::Null) | None => None,
        Some(other) => {
            fields.insert("description".into(), other);
            None
        }
    };
    let attributes = (!fields.is_empty()).then_some(Value::Object(fields));
    ProductUpsert { sku, name, description, attributes }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::uploads::scan::scanner;

    fn upsert(value: Value) -> ProductUpsert {
        let Value::Object(fields) = value else { panic!("object") };
        to_upsert(fields)
    }

    #[test]
    fn items_map_to_upserts_keeping_every_field() {
        let item = upsert(json!({"id": "123", "name": "mesa", "description": "de pinho", "price": 10, "tags": ["a"]}));
        assert_eq!(item.sku, "123");
        assert_eq!(item.name, "mesa");
        assert_eq!(item.description.as_deref(), Some("de pinho"));
        assert_eq!(item.attributes, Some(json!({"price": 10, "tags": ["a"]})));

        let item = upsert(json!({"id": 42, "name": "cadeira"}));
        assert_eq!(item.sku, "42");
        assert_eq!(item.description, None);
        assert_eq!(item.attributes, None);

        let item = upsert(json!({"id": -7, "name": "x", "description": {"long": "text"}}));
        assert_eq!(item.sku, "-7");
        assert_eq!(item.description, None);
        assert_eq!(item.attributes, Some(json!({"description": {"long": "text"}})));
    }

    /// Scans a one-item body and checks its item under `policy`.
    fn check_one(item: &str, policy: ErrorPolicy) -> Checked {
        let body = format!("[{item}]");
        let mut scanner = scanner();
        scanner.feed(body.as_bytes(), |_| {}).expect("the body is JSON");
        let issues = scanner.take_item_issues();
        check(item.as_bytes(), 1, &issues, policy).expect("decodes")
    }

    fn fields(checked: &Checked) -> Vec<&str> {
        checked.errors.iter().map(|error| error.field.as_str()).collect()
    }

    #[test]
    fn errors_name_the_field_and_the_policy_decides_what_is_kept() {
        let nul_name = check_one(r#"{"id":"s1","name":"a\u0000b"}"#, ErrorPolicy::IgnoreFailed);
        assert!(nul_name.upsert.is_none(), "a required field: skipped");
        assert_eq!((nul_name.sku.as_str(), fields(&nul_name)), ("s1", vec!["name"]));
        assert!(nul_name.errors[0].reason.contains("NUL"), "{:?}", nul_name.errors);

        let item = r#"{"id":7,"name":"n","description":"x\u0000","weight":1e400,"color":"red"}"#;
        let skipped = check_one(item, ErrorPolicy::RejectFailedRows);
        assert!(skipped.upsert.is_none());
        assert_eq!((skipped.sku.as_str(), fields(&skipped)), ("7", vec!["description", "weight"]));

        let kept = check_one(item, ErrorPolicy::IgnoreFailed);
        let upsert = kept.upsert.as_ref().expect("kept without the invalid fields");
        assert_eq!(upsert.description, None);
        assert_eq!(upsert.attributes, Some(json!({"color": "red"})));
        assert!(kept.item_errors(3).all(|error| error.kept && error.index == 3 && error.sku == "7"));

        let missing = check_one(r#"{"id":"s2"}"#, ErrorPolicy::IgnoreFailed);
        assert_eq!(fields(&missing), vec!["name"]);
        assert!(missing.upsert.is_none());

        // The catalog's checks too: attributes over their limit are dropped under
        // IGNORE_FAILED, the item skipped otherwise.
        let big = format!(r#"{{"id":"s3","name":"n","blob":"{}"}}"#, "x".repeat(70_000));
        let kept = check_one(&big, ErrorPolicy::IgnoreFailed);
        assert_eq!(fields(&kept), vec!["attributes"]);
        assert!(kept.upsert.as_ref().is_some_and(|upsert| upsert.attributes.is_none()));
        assert!(check_one(&big, ErrorPolicy::RejectFailedRows).upsert.is_none());

        let clean = check_one(r#"{"id":"s4","name":"n"}"#, ErrorPolicy::RejectFailedRows);
        assert!(clean.errors.is_empty() && clean.upsert.is_some());
    }

    #[test]
    fn the_edge_describes_an_item_as_ingestion_will_treat_it() {
        let item = r#"{"name":"n","k\u0000":1,"id":"s9"}"#;
        let body = format!("[{item}]");
        let mut scanner = scanner();
        scanner.feed(body.as_bytes(), |_| {}).expect("JSON");
        let errors = describe(item.as_bytes(), 1, 0, &scanner.take_item_issues(), ErrorPolicy::IgnoreFailed);
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].sku.as_str(), errors[0].field.as_str(), errors[0].kept), ("s9", "k\\0", true));
        // And ingestion leaves that member out.
        let kept = check_one(item, ErrorPolicy::IgnoreFailed);
        assert_eq!(kept.upsert.and_then(|upsert| upsert.attributes), None);
    }
}

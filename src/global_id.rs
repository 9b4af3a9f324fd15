//! Global object ids (Relay's Global Object Identification): every entity's `id` names
//! its GraphQL type and its row, so one id means one object across the whole schema,
//! `node(id:)` can refetch anything, and client caches need no per-type key settings.
//!
//! The text is base64url (no padding) of `Type:row`. Clients treat it as opaque; the
//! type name comes from the GraphQL type itself (`OutputType::type_name`), so an id and
//! the type it is read back as cannot drift apart.

use async_graphql::{ID, OutputType};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::{AppError, AppResult};

/// Longest id text we try to decode: far above any real id, so garbage is refused early.
const MAX_ID_LEN: usize = 200;

/// A decoded id: the GraphQL type it names and the row within that type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalId {
    pub type_name: String,
    pub row: i64,
}

/// The global id of row `row` of the GraphQL type `T`.
pub fn of<T: OutputType>(row: i64) -> ID {
    encode(&T::type_name(), row)
}

pub fn encode(type_name: &str, row: i64) -> ID {
    ID(URL_SAFE_NO_PAD.encode(format!("{type_name}:{row}")))
}

/// Decodes any global id; a malformed one is `BAD_USER_INPUT`.
pub fn decode(id: &ID) -> AppResult<GlobalId> {
    let text = id.as_str();
    (text.len() <= MAX_ID_LEN)
        .then(|| URL_SAFE_NO_PAD.decode(text).ok())
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|decoded| {
            let (type_name, row) = decoded.split_once(':')?;
            let row = row.parse::<i64>().ok().filter(|row| *row > 0)?;
            let well_formed = !type_name.is_empty() && type_name.bytes().all(|byte| byte.is_ascii_alphanumeric());
            well_formed.then(|| GlobalId { type_name: type_name.to_owned(), row })
        })
        .ok_or_else(|| AppError::bad_input(format!("`{}` is not a valid id", shown(text))))
}

/// The row of an id that must name a `T`: a malformed id, or one of another type, is
/// `BAD_USER_INPUT` naming the type expected.
pub fn parse<T: OutputType>(id: &ID) -> AppResult<i64> {
    let expected = T::type_name();
    let decoded = decode(id).map_err(|_| {
        AppError::bad_input(format!("`{}` is not a valid id: expected the id of a {expected}", shown(id.as_str())))
    })?;
    if decoded.type_name != expected {
        return Err(AppError::bad_input(format!(
            "`{}` is the id of a {}: expected the id of a {expected}",
            shown(id.as_str()),
            decoded.type_name
        )));
    }
    Ok(decoded.row)
}

/// The id as quoted in an error: long garbage is cut, so errors stay small.
fn shown(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_type() {
        let id = encode("Product", 42);
        assert_eq!(decode(&id).ok(), Some(GlobalId { type_name: "Product".into(), row: 42 }));
        assert!(!id.as_str().contains("42"), "ids are opaque: {}", id.as_str());
    }

    #[test]
    fn malformed_and_foreign_ids_are_bad_input() {
        for garbage in ["", "1", "42", "UHJvZHVjdA", "!!!", &"A".repeat(500)] {
            assert!(matches!(decode(&ID(garbage.into())), Err(AppError::BadInput(_))), "{garbage}");
        }
        // Well-formed base64 of a bad row or type name.
        for text in ["Product:0", "Product:-3", "Product:x", ":5", "Pro duct:5"] {
            let id = ID(URL_SAFE_NO_PAD.encode(text));
            assert!(matches!(decode(&id), Err(AppError::BadInput(_))), "{text}");
        }
    }
}

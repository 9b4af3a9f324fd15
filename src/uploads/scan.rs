//! The upload body's scan: the [`jsonscan`] crate's streaming validator (one JSON array of
//! product objects, checked chunk by chunk, item spans and the first error out) with the
//! service's limits. The character limits are the catalog's, so a body that passes here
//! is one the catalog takes; the others keep memory flat and items small.

pub use jsonscan::{BodyScanner, ItemSpan, Limits, ScanError as SyntaxError, Summary};

use crate::catalog::model as catalog;

/// The limits of an upload body.
pub const LIMITS: Limits = Limits {
    max_depth: 64,
    max_id_chars: catalog::SKU_MAX as u32,
    max_name_chars: catalog::NAME_MAX as u32,
    max_description_chars: catalog::DESCRIPTION_MAX as u32,
    max_item_bytes: 128 * 1024,
    max_number_chars: 1000,
};

/// A scanner for an upload body.
pub fn scanner() -> BodyScanner {
    BodyScanner::new(LIMITS)
}

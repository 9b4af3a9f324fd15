//! The upload body's scan: the [`jsonscan`] crate's streaming validator (one JSON array of
//! product objects, checked chunk by chunk, item spans and the first error out) with the
//! service's limits. The character limits are the catalog's; the others keep memory flat
//! and items small. Problems confined to one item (a NUL, a number beyond f64, a field
//! over its limit, a missing name…) are item issues, reported while the scan goes on: the
//! upload's error policy decides what becomes of the item. Anything else refuses the body.

pub use jsonscan::{ErrorKind, ItemIssue, ItemSpan, Limits, ScanError as SyntaxError, Summary};

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

/// A scanner for an upload body, reporting item issues.
pub fn scanner() -> BodyScanner {
    BodyScanner(jsonscan::BodyScanner::reporting_item_issues(LIMITS))
}

/// [`jsonscan::BodyScanner`] with [`LIMITS`], as the uploads (and bench/helpers) use it.
#[derive(Debug, Clone)]
pub struct BodyScanner(jsonscan::BodyScanner);

impl Default for BodyScanner {
    fn default() -> Self {
        scanner()
    }
}

impl BodyScanner {
    pub fn new() -> Self {
        scanner()
    }

    /// Scans the next chunk, calling `on_item` for every item that closes in it. After an
    /// error every later call returns the same error.
    pub fn feed<F: FnMut(ItemSpan)>(&mut self, chunk: &[u8], on_item: F) -> Result<(), SyntaxError> {
        self.0.feed(chunk, on_item)
    }

    /// The item issues found since the last call, in body order.
    pub fn take_item_issues(&mut self) -> Vec<ItemIssue> {
        self.0.take_item_issues()
    }

    /// Declares the end of the body: the summary when it was one complete array.
    pub fn finish(self) -> Result<Summary, SyntaxError> {
        self.0.finish()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.0.offset()
    }

    /// Offset of the `{` of the item being scanned, if one is open.
    pub fn open_item_start(&self) -> Option<u64> {
        self.0.open_item_start()
    }
}

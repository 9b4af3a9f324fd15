//! Input rules of the store, in one place: text fields, e-mail addresses, release
//! years, money and quantities, and the case folding used for matching.

use chrono::{Datelike as _, Utc};

use crate::error::{AppError, AppResult};

/// Longest name, title, artist or genre accepted (characters).
pub const MAX_TEXT: usize = 200;
/// Longest e-mail address (RFC 5321 path limit).
pub const MAX_EMAIL: usize = 254;
/// The first commercially released sound recordings; anything earlier is a typo.
pub const FIRST_RELEASE_YEAR: i32 = 1860;

/// The form used for case-insensitive matching; stored in the `*_folded` columns and
/// applied to search terms, so both backends compare the same (Unicode) way.
pub fn fold(text: &str) -> String {
    text.to_lowercase()
}

/// A required text field: trimmed, not empty, at most [`MAX_TEXT`] characters, no
/// control characters.
pub fn text(field: &str, value: &str) -> AppResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AppError::bad_input(format!("`{field}` must not be empty")));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(AppError::bad_input(format!("`{field}` must be at most {MAX_TEXT} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::bad_input(format!("`{field}` must not contain control characters")));
    }
    Ok(value.to_string())
}

/// An e-mail address as the customer typed it (trimmed) after a pragmatic check:
/// `local@domain`, a dotted domain of letters, digits and hyphens, no spaces or quotes.
/// Uniqueness is decided on its folded form.
pub fn email(value: &str) -> AppResult<String> {
    no_nul("email", value)?;
    let value = value.trim();
    let invalid = || AppError::bad_input(format!("`{value}` is not a valid e-mail address"));
    if value.is_empty() || value.len() > MAX_EMAIL {
        return Err(invalid());
    }
    let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok { Ok(value.to_string()) } else { Err(invalid()) }
}

/// Text the database can store and compare ([`crate::db::unstorable_text`]).
pub fn no_nul(field: &str, value: &str) -> AppResult<()> {
    match crate::db::unstorable_text(value) {
        Some(reason) => Err(AppError::bad_input(format!("`{field}` {reason}"))),
        None => Ok(()),
    }
}

/// An optional filter value (a search term, an artist…): compared in the database, so
/// checked by [`no_nul`].
pub fn filter_text(field: &str, value: Option<String>) -> AppResult<Option<String>> {
    if let Some(text) = &value {
        no_nul(field, text)?;
    }
    Ok(value)
}

/// Release years from [`FIRST_RELEASE_YEAR`] to next year (announced releases).
pub fn release_year(year: i32) -> AppResult<i32> {
    let last = Utc::now().year() + 1;
    if (FIRST_RELEASE_YEAR..=last).contains(&year) {
        Ok(year)
    } else {
        Err(AppError::bad_input(format!("`releaseYear` must be between {FIRST_RELEASE_YEAR} and {last}, got {year}")))
    }
}

/// Prices are integer minor units (cents), zero or more.
pub fn price(price: i32) -> AppResult<i64> {
    if price < 0 {
        return Err(AppError::bad_input(format!("`price` must not be negative, got {price}")));
    }
    Ok(i64::from(price))
}

/// Stock on hand, zero or more.
pub fn stock(stock: i32) -> AppResult<i32> {
    if stock < 0 {
        return Err(AppError::bad_input(format!("`stock` must not be negative, got {stock}")));
    }
    Ok(stock)
}

/// Units bought or restocked: one or more. (Above 2^31−1 the GraphQL `Int` already
/// refuses the value.)
pub fn quantity(field: &str, quantity: i32) -> AppResult<i32> {
    if quantity < 1 {
        return Err(AppError::bad_input(format!("`{field}` must be at least 1, got {quantity}")));
    }
    Ok(quantity)
}

/// A `LIKE` pattern matching `needle` anywhere, case-insensitively when compared with
/// a folded column (`… LIKE $n ESCAPE '\'`). `%`, `_` and `\` in the needle match
/// themselves.
pub fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in fold(needle.trim()).chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in ["ana@example.com", "A.B+tag@Sub.Example.co", "  x@y.io "] {
            assert!(email(good).is_ok(), "{good}");
        }
        for bad in
            ["", "plain", "@example.com", "a@", "a@b", "a b@c.com", "a@@b.com", "a@-b.com", "a@b..com", ".a@b.com"]
        {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert_eq!(email(" Ana@Example.COM ").ok().as_deref(), Some("Ana@Example.COM"));
    }

    #[test]
    fn years_prices_quantities() {
        assert!(release_year(0).is_err());
        assert!(release_year(3000).is_err());
        assert!(release_year(1859).is_err());
        assert!(release_year(1967).is_ok());
        assert!(price(-1).is_err());
        assert!(price(0).is_ok());
        assert!(stock(-1).is_err());
        assert!(quantity("quantity", 0).is_err());
        assert!(quantity("quantity", -3).is_err());
        assert!(quantity("quantity", 1).is_ok());
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(text("title", "  Kind of Blue ").ok().as_deref(), Some("Kind of Blue"));
        assert!(text("title", "   ").is_err());
        assert!(text("title", &"x".repeat(MAX_TEXT + 1)).is_err());
        assert!(text("title", "a\u{0}b").is_err());
    }

    #[test]
    fn like_patterns_escape_wildcards_and_fold() {
        assert_eq!(contains_pattern("AbC"), "%abc%");
        assert_eq!(contains_pattern("50%_\\"), "%50\\%\\_\\\\%");
        assert_eq!(contains_pattern("ÉLAN"), "%élan%");
    }
}

//! The `after` cursor of keyset paging, and the `Link: rel="next"` header that hands it out.
//!
//! A cursor is the last task's sort value and id, tagged with the sort and order it belongs to,
//! as unpadded base64url: opaque to clients, safe in a URL, and decoded without any lookup. A
//! cursor for another sort or order, or one that does not decode, is a 400 like any other
//! parameter that does not parse.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::DateTime;

use crate::{
    error::ApiError,
    store::{Cursor, ListQuery, SortKey, SortOrder, SortValue, StatusFilter},
};

/// The longest cursor accepted: a 200-character title is at most 800 bytes of UTF-8.
const MAX_CURSOR_LEN: usize = 1200;

/// `sort` and `order` as one tag, so that a cursor cannot be replayed under another ordering.
fn tag(sort: SortKey, order: SortOrder) -> &'static str {
    match (sort, order) {
        (SortKey::Created, SortOrder::Asc) => "ca",
        (SortKey::Created, SortOrder::Desc) => "cd",
        (SortKey::Updated, SortOrder::Asc) => "ua",
        (SortKey::Updated, SortOrder::Desc) => "ud",
        (SortKey::Title, SortOrder::Asc) => "ta",
        (SortKey::Title, SortOrder::Desc) => "td",
    }
}

pub fn encode(cursor: &Cursor, sort: SortKey, order: SortOrder) -> String {
    let value = match &cursor.value {
        SortValue::Time(at) => at.timestamp_micros().to_string(),
        SortValue::Title(title) => title.clone(),
    };
    URL_SAFE_NO_PAD.encode(format!("{}.{}.{value}", tag(sort, order), cursor.id))
}

pub fn decode(text: &str, sort: SortKey, order: SortOrder) -> Result<Cursor, ApiError> {
    let invalid =
        || ApiError::BadRequest("`after` is not a cursor that this listing gave out".into());
    if text.len() > MAX_CURSOR_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '.');
    let (Some(cursor_tag), Some(id), Some(value)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if cursor_tag != tag(sort, order) {
        return Err(ApiError::BadRequest(
            "`after` belongs to another `sort` or `order`: start again without it".into(),
        ));
    }
    let id = id.parse().map_err(|_| invalid())?;
    // Only values a task can have: a time the database holds, a title without NUL.
    let value = match sort {
        SortKey::Created | SortKey::Updated => SortValue::Time(
            value
                .parse()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .filter(crate::store::storable)
                .ok_or_else(invalid)?,
        ),
        SortKey::Title if value.contains('\0') => return Err(invalid()),
        SortKey::Title => SortValue::Title(value.to_owned()),
    };
    Ok(Cursor { value, id })
}

/// `Link: <path?…&after=…>; rel="next"` for the page after this one: the same path and
/// parameters, `after` instead of `offset`.
pub fn next_link(path: &str, query: &ListQuery, next: &Cursor) -> String {
    let status = match query.status {
        StatusFilter::All => None,
        StatusFilter::Pending => Some("status=pending"),
        StatusFilter::Completed => Some("status=completed"),
    };
    let sort = match query.sort {
        SortKey::Created => None,
        SortKey::Updated => Some("sort=updated"),
        SortKey::Title => Some("sort=title"),
    };
    let order = (query.order == SortOrder::Desc).then_some("order=desc");
    let limit = query.limit.map(|limit| format!("limit={limit}"));
    let after = format!("after={}", encode(next, query.sort, query.order));
    let params: Vec<&str> = [status, sort, order, limit.as_deref(), Some(after.as_str())]
        .into_iter()
        .flatten()
        .collect();
    format!("<{path}?{}>; rel=\"next\"", params.join("&"))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn a_cursor_decodes_to_what_was_encoded_under_its_own_ordering_only() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_767_952_800_123_456).unwrap();
        let cases = [
            (Cursor { value: SortValue::Time(at), id: 7 }, SortKey::Created),
            (Cursor { value: SortValue::Time(at), id: 7 }, SortKey::Updated),
            (Cursor { value: SortValue::Title("a.b/ü ✓&=".into()), id: 9 }, SortKey::Title),
        ];
        for (cursor, sort) in cases {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                let text = encode(&cursor, sort, order);
                assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)));
                assert_eq!(decode(&text, sort, order).unwrap(), cursor);
                let other = if order == SortOrder::Asc { SortOrder::Desc } else { SortOrder::Asc };
                assert!(matches!(decode(&text, sort, other), Err(ApiError::BadRequest(_))));
            }
        }
    }

    #[test]
    fn a_title_with_a_nul_is_no_cursor() {
        let text = URL_SAFE_NO_PAD.encode("ta.1.a\0b");
        assert!(matches!(
            decode(&text, SortKey::Title, SortOrder::Asc),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn anything_else_is_a_bad_request() {
        let forged = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for text in [
            "",
            "!!",
            "Y2E",
            "Y2EuNw",
            "Y2EueC4x",
            "Y2EuNy54",
            &"A".repeat(2000),
            &forged("ca.1.-300000000000000000"),
            &forged("ca.1.300000000000000000"),
        ] {
            assert!(
                matches!(
                    decode(text, SortKey::Created, SortOrder::Asc),
                    Err(ApiError::BadRequest(_))
                ),
                "{text}"
            );
        }
    }
}

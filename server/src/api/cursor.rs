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
    store::{Cursor, ListQuery, Priority, SortKey, SortOrder, SortValue},
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
        (SortKey::DueDate, SortOrder::Asc) => "da",
        (SortKey::DueDate, SortOrder::Desc) => "dd",
        (SortKey::Priority, SortOrder::Asc) => "pa",
        (SortKey::Priority, SortOrder::Desc) => "pd",
    }
}

/// How a task without a due date stands in a due-date cursor.
const NO_DUE_DATE: &str = "-";

pub fn encode(cursor: &Cursor, sort: SortKey, order: SortOrder) -> String {
    let value = match &cursor.value {
        SortValue::Time(at) => at.timestamp_micros().to_string(),
        SortValue::Title(title) => title.clone(),
        SortValue::DueDate(Some(at)) => at.timestamp_micros().to_string(),
        SortValue::DueDate(None) => NO_DUE_DATE.to_owned(),
        SortValue::Priority(rank) => rank.to_string(),
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
    // Only values a task can have: a time the database holds, a title without NUL, a rank.
    let time = |value: &str| {
        value
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .filter(crate::store::storable)
            .ok_or_else(invalid)
    };
    let value = match sort {
        SortKey::Created | SortKey::Updated => SortValue::Time(time(value)?),
        SortKey::Title if value.contains('\0') => return Err(invalid()),
        SortKey::Title => SortValue::Title(value.to_owned()),
        SortKey::DueDate if value == NO_DUE_DATE => SortValue::DueDate(None),
        SortKey::DueDate => SortValue::DueDate(Some(time(value)?)),
        SortKey::Priority => SortValue::Priority(
            value
                .parse()
                .ok()
                .filter(|rank| Priority::try_from(*rank).is_ok())
                .ok_or_else(invalid)?,
        ),
    };
    Ok(Cursor { value, id })
}

/// `Link: <path?…&after=…>; rel="next"` for the page after this one: the same path and
/// parameters as this request (`query`, its query string), without `offset` and with `after`.
pub fn next_link(path: &str, query: Option<&str>, list: &ListQuery, next: &Cursor) -> String {
    let mut params = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "offset" && name != "after" {
            params.append_pair(&name, &value);
        }
    }
    params.append_pair("after", &encode(next, list.sort, list.order));
    format!("<{path}?{}>; rel=\"next\"", params.finish())
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
            (Cursor { value: SortValue::DueDate(Some(at)), id: 3 }, SortKey::DueDate),
            (Cursor { value: SortValue::DueDate(None), id: 3 }, SortKey::DueDate),
            (Cursor { value: SortValue::Priority(3), id: 5 }, SortKey::Priority),
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
    fn no_rank_but_a_priority_s_is_a_cursor() {
        for text in ["pa.1.4", "pa.1.-1", "pa.1.x", "da.1.", "da.1.--"] {
            let text = URL_SAFE_NO_PAD.encode(text);
            let sort = if text.starts_with("cG") { SortKey::Priority } else { SortKey::DueDate };
            assert!(matches!(decode(&text, sort, SortOrder::Asc), Err(ApiError::BadRequest(_))));
        }
    }

    #[test]
    fn the_next_link_keeps_every_parameter_but_offset_and_after() {
        let list = ListQuery { limit: Some(2), ..ListQuery::default() };
        let next = Cursor { value: SortValue::Time(DateTime::UNIX_EPOCH), id: 4 };
        let link = next_link(
            "/api/tasks",
            Some("q=milk+%26+eggs&tag=a&tag=b&offset=5&limit=2&after=x"),
            &list,
            &next,
        );
        let after = encode(&next, SortKey::Created, SortOrder::Asc);
        assert_eq!(
            link,
            format!("</api/tasks?q=milk+%26+eggs&tag=a&tag=b&limit=2&after={after}>; rel=\"next\"")
        );
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

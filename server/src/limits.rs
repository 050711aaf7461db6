//! Every size limit the API enforces, defined once: the validation, the middleware and the
//! OpenAPI document all read these (a unit test in `api::spec` holds the document to them).

/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A task title: 1 to this many Unicode characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// A task description: at most this many Unicode characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1000;
/// The largest `limit` of a listing.
pub const LIST_LIMIT_MAX: i64 = 1000;
/// Tokens longer than this are rejected before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest subject (user id) accepted; the database column has the same bound.
pub const MAX_SUBJECT_CHARS: usize = 255;
/// A tag, once trimmed: 1 to this many Unicode characters.
pub const TAG_MAX_CHARS: usize = 32;
/// The most tags a task carries.
pub const TAGS_MAX: usize = 20;
/// A listing's `search`: 1 to this many Unicode characters.
pub const SEARCH_MAX_CHARS: usize = 100;
/// Better Auth's `session_data` cookie, chunks joined: larger is not a cookie it set (its
/// chunks are ~4 KB each; a session with a large user record takes a few).
pub const MAX_SESSION_COOKIE_BYTES: usize = 32 * 1024;

//! `GET /files`: the account's files newest first, a page at a time (an
//! opaque cursor), filtered by category, by a substring of the name or the
//! description, and by the subject of the upload token they came with.

use axum::{extract::State, http::HeaderMap, response::Response};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{FILE_COLUMNS, FileView, with_etag};
use crate::{
    auth::CurrentAccount, error::ApiError, extract::Query, sniff::Category, state::AppState,
};

/// `GET /files` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only this category.
    pub category: Option<Category>,
    /// Case-insensitive substring of the filename or the description (no
    /// NUL characters, which no name can hold).
    #[param(pattern = r"^[^\u0000]*$")]
    pub q: Option<String>,
    /// Only the files uploaded with upload tokens of this `subject`.
    #[param(max_length = 255, pattern = r"^[^\u0000]*$")]
    pub subject: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (opaque: any other value is 400).
    #[param(format = "cursor")]
    pub cursor: Option<String>,
}

/// A page of files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// Newest first.
    pub files: Vec<FileView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(f: &FileView) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", f.created_at.timestamp_micros(), f.id))
}

/// The timestamps a cursor may carry: those a file row can have. chrono
/// takes years Postgres refuses (before 4713 BC), which would fail the query.
const CURSOR_MICROS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999_999;

fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (micros, id) = raw.split_once('.')?;
    let micros: i64 = micros.parse().ok()?;
    if !CURSOR_MICROS.contains(&micros) {
        return None;
    }
    Some((DateTime::from_timestamp_micros(micros)?, id.parse().ok()?))
}

/// Escapes `%`, `_` and `\` for a LIKE pattern.
fn like_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Lists the caller's files, newest first.
#[utoipa::path(get, path = "/files", tag = "files", params(ListQuery),
    responses((status = 200, body = FileList), (status = 304, description = "not modified (If-None-Match)")))]
pub async fn list(
    State(state): State<AppState>,
    auth: CurrentAccount,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = i64::from(query.limit.unwrap_or(50));
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 200"));
    }
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::bad_request("cursor is not one this API returned"))?,
        ),
    };
    // Postgres text cannot hold NUL, so such a query names nothing valid.
    if query.q.as_deref().is_some_and(|q| q.contains('\0')) {
        return Err(ApiError::bad_request("q must not contain NUL characters"));
    }
    if query
        .subject
        .as_deref()
        .is_some_and(|s| s.contains('\0') || s.chars().count() > 255)
    {
        return Err(ApiError::bad_request(
            "subject is at most 255 characters, without NUL",
        ));
    }
    let pattern = query
        .q
        .as_deref()
        .filter(|q| !q.is_empty())
        .map(|q| format!("%{}%", like_escape(&q.to_lowercase())));
    // A subject names the statement that the subject's index serves (a
    // generic plan of `$7 IS NULL OR subject = $7` would scan the account).
    let subject = query.subject.as_deref().filter(|s| !s.is_empty());
    let by_subject = match subject {
        Some(_) => "subject = $7",
        None => "$7::text IS NULL",
    };
    let mut files: Vec<FileView> = sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS} FROM files
         WHERE account_id = $1
           AND ($2::text IS NULL OR category = $2)
           AND ($3::text IS NULL OR lower(filename) LIKE $3 OR lower(description) LIKE $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
           AND {by_subject}
         ORDER BY created_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(auth.account.id)
    .bind(query.category.map(Category::as_str))
    .bind(pattern)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit + 1)
    .bind(subject)
    .fetch_all(&state.db)
    .await?;
    let next_cursor = if files.len() as i64 > limit {
        files.truncate(limit as usize);
        files.last().map(encode_cursor)
    } else {
        None
    };
    with_etag(&headers, &FileList { files, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let id = Uuid::now_v7();
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let view = FileView {
            id,
            filename: "a".into(),
            content_type: "text/plain".into(),
            category: Category::Document,
            size: 1,
            sha256: None,
            description: None,
            created_at: at,
            subject: None,
            metadata: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(&view)), Some((at, id)));
        assert_eq!(decode_cursor("not a cursor"), None);
        for micros in [
            i64::MIN,
            -8_000_000_000_000_000_000,
            -1,
            253_402_300_800_000_000,
        ] {
            let c = URL_SAFE_NO_PAD.encode(format!("{micros}.{id}"));
            assert_eq!(decode_cursor(&c), None, "{micros}");
        }
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape("50%_a\\b"), "50\\%\\_a\\\\b");
    }
}

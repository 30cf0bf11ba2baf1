//! The JSON bodies of the presigned-upload routes, as the OpenAPI document
//! describes them. This module alone decides their schemas: the accepted
//! types from `sniff`'s table, the rule between `sha256`, `multipart` and
//! `size` that a derived schema cannot state, and what the document says
//! of a server whose storage is the local folder.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::issue::SINGLE_PUT_MAX;

/// Body of `POST /upload/presigned`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresignRequest {
    /// The file's name (display only).
    pub filename: String,
    /// The file's type, one intake accepts (aliases such as `image/jpg`
    /// and parameters are accepted too, and normalised: the PUT must send
    /// exactly the `Content-Type` the answer's headers give).
    #[schema(schema_with = accepted_content_type)]
    pub content_type: String,
    /// Exact size in bytes.
    #[schema(minimum = 1)]
    pub size: u64,
    /// SHA-256 of the content (hex); storage refuses other bytes.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
    /// Ask for a multipart upload even at 5 GB or less.
    #[serde(default)]
    pub multipart: bool,
}

/// The documented body of `POST /upload/presigned`: a [`PresignRequest`]
/// whose `sha256`, if any, goes with a single PUT (no `multipart`, at most
/// 5 GiB), as a multipart upload has no single signature to bind it to
/// (422): a rule between fields that the struct's own schema cannot state.
pub struct PresignBody;

impl utoipa::PartialSchema for PresignBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{
            AllOfBuilder, ObjectBuilder, Ref,
            schema::{AnyOfBuilder, SchemaType, Type},
        };
        let single_put = ObjectBuilder::new()
            .property(
                "multipart",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Boolean))
                    .enum_values(Some([false])),
            )
            .property("size", single_put_size());
        let no_sha256 = ObjectBuilder::new().property(
            "sha256",
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::Null)),
        );
        AllOfBuilder::new()
            .item(Ref::from_schema_name("PresignRequest"))
            .item(AnyOfBuilder::new().item(single_put).item(no_sha256))
            .into()
    }
}

impl ToSchema for PresignBody {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Schema>)>) {
        schemas.push((
            "PresignRequest".into(),
            <PresignRequest as utoipa::PartialSchema>::schema(),
        ));
        <PresignRequest as ToSchema>::schemas(schemas);
    }
}

/// States in the OpenAPI document what this server's storage allows: the
/// local folder takes no multipart presigned uploads (422), so there
/// `multipart` can only be `false` and `size` at most one PUT's.
pub fn document(doc: &mut utoipa::openapi::OpenApi, storage: &crate::config::StorageConfig) {
    use utoipa::openapi::{RefOr, Schema};
    if !matches!(storage, crate::config::StorageConfig::Fs { .. }) {
        return;
    }
    let request = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PresignRequest"));
    if let Some(RefOr::T(Schema::Object(object))) = request
        && let Some(RefOr::T(Schema::Object(multipart))) = object.properties.get_mut("multipart")
    {
        multipart.enum_values = Some(vec![false.into()]);
        multipart.description =
            Some("Multipart presigned uploads need the S3 backend: not on this server.".into());
    }
    if let Some(RefOr::T(Schema::Object(object))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PresignRequest"))
    {
        // Above one PUT's size an upload would be multipart.
        object
            .properties
            .insert("size".into(), single_put_size().into());
    }
}

/// A `size` that one PUT can carry.
fn single_put_size() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .maximum(Some(SINGLE_PUT_MAX as f64))
        .build()
}

/// The schema of a declared `content_type`: the accepted types, from the
/// table `sniff` decides by, so the document cannot drift from it.
fn accepted_content_type() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::sniff::accepted_types()))
        .build()
}

/// One part's URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartUrl {
    /// From 1.
    pub part_number: u32,
    /// PUT the part's bytes here.
    pub url: String,
}

/// Answer of `POST /upload/presigned`: a single PUT (`method`, `url`,
/// `headers`) or a multipart upload (`part_size`, `parts`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Presigned {
    /// Id to complete or abort the upload with.
    pub upload_id: Uuid,
    /// When the URLs stop working.
    pub expires_at: DateTime<Utc>,
    /// `PUT`, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Headers to send exactly as given, for a single upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// Bytes of every part but the last, for a multipart upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    /// The parts' URLs, for a multipart upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<PartUrl>>,
}

/// A completed part, as storage answered its PUT.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletedPart {
    /// From 1.
    pub part_number: i32,
    /// The `ETag` storage answered.
    pub etag: String,
}

/// Body of `POST /upload/presigned/{id}/complete` (multipart uploads only).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CompleteRequest {
    /// Every part, in order.
    #[serde(default)]
    pub parts: Vec<CompletedPart>,
}

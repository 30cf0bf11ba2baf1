//! The multipart bodies of the streaming uploads as the OpenAPI document
//! describes them: objects with binary `file` / `files` properties and no
//! others, so client generators and the schema fuzzer build real uploads.
//! The bodies are read part by part ([`super::multipart`]), never into
//! these types, which is why their schemas are written out by hand.

use std::borrow::Cow;

use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ArrayBuilder, Object, ObjectBuilder, RefOr, Schema,
        schema::{AdditionalProperties, KnownFormat, SchemaFormat, Type},
    },
};

/// `POST /upload/stream`: one part named `file`.
pub struct SingleUpload;

/// `POST /upload/stream-batch`: 1 to the tier's batch size parts named `files`.
pub struct BatchUpload;

fn binary_file() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .min_length(Some(1))
        .build()
}

fn form(name: &str, description: &str, property: RefOr<Schema>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .property(name, property)
        .required(name)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .into()
}

impl PartialSchema for SingleUpload {
    fn schema() -> RefOr<Schema> {
        form(
            "file",
            "one part named `file`; its type is decided by its first bytes (an empty file is 422)",
            binary_file().into(),
        )
    }
}

impl ToSchema for SingleUpload {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SingleUpload")
    }
}

impl PartialSchema for BatchUpload {
    fn schema() -> RefOr<Schema> {
        form(
            "files",
            "1 to the tier's batch size parts named `files`, each decided by its own first bytes",
            ArrayBuilder::new()
                .items(binary_file())
                .min_items(Some(1))
                .into(),
        )
    }
}

impl ToSchema for BatchUpload {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("BatchUpload")
    }
}

//! What an opted-in route's document says of `Idempotency-Key`: the
//! header, the mark of a replayed answer, and the answers the key itself
//! may give (409 while it is in use; 422 for another body, where bodies are
//! compared).

use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type,
    header::{Header, HeaderBuilder},
    path::{Operation, ParameterBuilder, ParameterIn, Paths},
    schema::SchemaType,
};

use super::{Payload, key::MAX_LEN};

/// The problem+json schema's name in the components (the HTTP layer adds
/// it with the answers every route can give).
const PROBLEM: &str = "Problem";

const IN_USE: &str = "idempotency_key_in_use: a request with this Idempotency-Key is still running (with Retry-After)";

const REUSED: &str =
    "idempotency_key_reused: this Idempotency-Key came with another body than its first request's";

/// Adds the header and its answers to the `POST` of every path.
pub fn document(paths: &mut Paths, payload: Payload) {
    for item in paths.paths.values_mut() {
        if let Some(op) = item.post.as_mut() {
            document_operation(op, payload);
        }
    }
}

fn document_operation(op: &mut Operation, payload: Payload) {
    let compared = match payload {
        Payload::Json => "; a later request with the key and another body is 422",
        Payload::Upload => "; bodies are not compared",
    };
    let description = format!(
        "Makes the request safe to retry: a later request with the same key \
         (same account, method and path) gets the first one's answer, marked \
         Idempotency-Replayed, without being run{compared}"
    );
    let parameter = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .min_length(Some(1))
                .max_length(Some(MAX_LEN))
                // Printable ASCII; a space at either end would not survive
                // the header's parsing.
                .pattern(Some(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(parameter);
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response
                .headers
                .insert("Idempotency-Replayed".into(), replayed());
        }
    }
    add_or_extend(op, "409", IN_USE, true);
    if payload == Payload::Json {
        add_or_extend(op, "422", REUSED, false);
    }
}

fn replayed() -> Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)))
        .description(Some(
            "`true` on an answer replayed for a repeated Idempotency-Key",
        ))
        .build()
}

/// Adds the answer `status`, or names `why` in the one the route documents.
fn add_or_extend(op: &mut Operation, status: &str, why: &str, retry_after: bool) {
    if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
        response.description = format!("{}; {why}", response.description);
        return;
    }
    let mut response = ResponseBuilder::new().description(why).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name(PROBLEM))))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)))
                .description(Some("whole seconds to wait"))
                .build(),
        );
    }
    op.responses
        .responses
        .insert(status.to_owned(), RefOr::T(response.build()));
}

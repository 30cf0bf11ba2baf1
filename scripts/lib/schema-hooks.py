"""Schemathesis hooks for intake's schema run (loaded by scripts/lib/schema.sh)."""

import base64
import re
import uuid

import schemathesis
from hypothesis import strategies as st

# tus bodies (application/offset+octet-stream) are raw bytes on the wire,
# exactly like application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

# `GET /files?cursor=` is opaque (format "cursor"): only a `next_cursor`
# the API returned is valid, anything else is 400. Valid ones are built the
# way the server builds them (base64url of "<micros>.<file id>", with a time
# a file row can have), so the fuzzer sends cursors the server must accept.
schemathesis.openapi.format(
    "cursor",
    st.builds(
        lambda micros, file_id: base64.urlsafe_b64encode(f"{micros}.{file_id}".encode()).decode().rstrip("="),
        st.integers(min_value=0, max_value=253_402_300_799_999_999),
        st.uuids(),
    ),
)

# On Python 3.11, hypothesis can fail with "SystemError: AST constructor
# recursion depth mismatch" (a CPython bug, fixed in 3.12) while it parses
# a source file only to describe a lambda in a strategy's repr. The
# description is cosmetic, so a failure to build it falls back to a plain
# name instead of ending the run; what is generated is unchanged.
from hypothesis.internal import lambda_sources as _lambda_sources

_describe_lambda = _lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe_lambda(f)
    except SystemError:
        return "lambda"


_lambda_sources.lambda_description = _lambda_description


# tus 1.0.0 requires Upload-Metadata's keys to be unique ("The key MUST be
# unique"), which the header's pattern in the document cannot state: a
# generated header that repeats a key is a request intake rightly refuses
# (400), not one the schema promises it accepts, so none is sent.
@schemathesis.hook
def filter_headers(context, headers):
    if not headers:
        return True
    for name, value in headers.items():
        if name.lower() != "upload-metadata" or not isinstance(value, str):
            continue
        keys = [pair.split(" ", 1)[0] for pair in value.split(",")]
        if len(keys) != len(set(keys)):
            return False
    return True


# An Idempotency-Key sent again is answered with its first request's answer
# (or 422 for another JSON body): what a later request gets then depends
# on an earlier one, which no schema of a request states, and a fuzzer
# repeats the few keys it generates. Each valid key is made unique, so
# every request runs as its own; an invalid one is sent as generated, to
# be refused. Replays are tested in tests/api/idempotency.rs.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


@schemathesis.hook
def map_case(context, case):
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and _IDEMPOTENCY_KEY.fullmatch(value):
            case.headers[name] = uuid.uuid4().hex
    return case

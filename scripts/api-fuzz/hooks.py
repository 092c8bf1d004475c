"""Project checks for scripts/api-fuzz.sh, on top of schemathesis' own.

Loaded through SCHEMATHESIS_HOOKS. Each check runs on every response of
every phase, whatever the OpenAPI document says, so a response the
document forgot (an undocumented status, an axum rejection) is held to the
contract of ../shared/SPEC.md §2 all the same.
"""

import json
import re

import schemathesis

# An error code is a stable machine-readable word (crates/server/src/http/error.rs,
# the `code` of ApiError and the rewrite in http/mod.rs `json_errors`).
ERROR_CODE = re.compile(r"^[a-z][a-z_]*$")


def _header(response, name):
    values = response.headers.get(name.lower())
    return values[0] if values else None


@schemathesis.check
def wsgate_json_error_shape(ctx, response, case):
    """Every 4xx/5xx is JSON `{"error": CODE, "message": TEXT}` (SPEC §2)."""
    if response.status_code < 400:
        return None
    content_type = _header(response, "content-type") or ""
    if not content_type.startswith("application/json"):
        raise AssertionError(
            f"error {response.status_code} is not JSON: Content-Type {content_type!r}"
        )
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"error {response.status_code}: body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise AssertionError(f"error {response.status_code}: body is not an object")
    code, message = body.get("error"), body.get("message")
    if not isinstance(code, str) or not ERROR_CODE.match(code):
        raise AssertionError(f"error {response.status_code}: `error` is not a code: {code!r}")
    if not isinstance(message, str) or not message:
        raise AssertionError(f"error {response.status_code}: `message` is not a non-empty string")
    return None


@schemathesis.check
def wsgate_error_headers(ctx, response, case):
    """401 names the scheme, 429 says when to retry (SPEC §3)."""
    if response.status_code == 401:
        value = _header(response, "www-authenticate") or ""
        if not value.startswith("Bearer"):
            raise AssertionError(f"401 without WWW-Authenticate: Bearer (got {value!r})")
    if response.status_code == 429:
        value = _header(response, "retry-after") or ""
        if not value.isdigit():
            raise AssertionError(f"429 without a Retry-After in seconds (got {value!r})")
    return None


@schemathesis.check
def wsgate_security_headers(ctx, response, case):
    """Every HTTP response carries the security headers (SPEC §2); the
    dashboard's page carries a CSP too."""
    expected = {
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
    }
    for name, value in expected.items():
        got = _header(response, name)
        if got != value:
            raise AssertionError(f"{name}: expected {value!r}, got {got!r}")
    content_type = _header(response, "content-type") or ""
    if content_type.startswith("text/html") and not _header(response, "content-security-policy"):
        raise AssertionError("an HTML page without Content-Security-Policy")
    return None


# Refusals of schema-valid requests that are right, and that the document
# cannot rule out: whether a channel's namespace exists and keeps presence
# or history is configuration (docs/channels.md: an unknown namespace is a
# 400), and `since_offset` and `since_epoch` go together, a dependency
# between query parameters that OpenAPI 3.0 cannot express. Only these exact
# answers are excused; any other 400 to valid data still fails the run.
EXCUSED_REFUSALS = {
    "unknown channel namespace",
    "presence is not enabled for this channel",
    "history is not enabled for this channel",
    "since_offset and since_epoch go together",
}


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """Keeps every failure but a 400 of the list above to valid data."""
    if failure.code != "ST202" or response is None or response.status_code != 400:
        return True
    try:
        message = json.loads(response.content).get("message")
    except (ValueError, AttributeError):
        return True
    return message not in EXCUSED_REFUSALS

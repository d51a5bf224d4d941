"""Schemathesis over the OpenAPI schema, in process: generated requests never cause a 5xx, and every
reply matches what the schema documents (status, content type, body, headers, auth)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from backend.auth import issue_token

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.ignored_auth,
]


# note: each operation is fuzzed with Hypothesis directly; schemathesis' pytest plugin does not
# work with this pytest version.
MAX_EXAMPLES = 30


@pytest.fixture
def api_schema(db, broker):
    from backend.main import create_app

    return schemathesis.openapi.from_asgi("/openapi.json", create_app())


def test_generated_requests_get_documented_replies(api_schema, db, user_factory):
    user, _token = user_factory("fuzz")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            # note: a fresh token per request, since a generated DELETE /api/tokens/{id} may revoke one.
            token = issue_token(db, user)
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        fuzz()

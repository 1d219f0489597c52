"""Issue 14: schemathesis against the running management API, bounded.

Every operation of docs/openapi.yaml gets generated requests (valid ones, ones aimed at
an existing tenant, and invalid ones); every answer must be no server error, have the
documented content type and match the documented schema.  The number of examples is
bounded (``PAGESTORE_FUZZ_EXAMPLES``, default 20 per operation and mode) so the run takes
seconds; hypothesis's database is off, so a failure is reproduced from its printed
example.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

if TYPE_CHECKING:
    from schemathesis import APIOperation, Case

    from tests.fixtures.stack import StackRunner

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("PAGESTORE_FUZZ_EXAMPLES", "20"))
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
KNOWN_TENANT = "0f" * 16
KNOWN_TIMELINE = "1e" * 16


def _run(op: APIOperation, base_url: str, mode: GenerationMode, session: requests.Session,
         seen: dict[int, int], **fixed: dict[str, str]) -> None:
    @given(case=op.as_strategy(generation_mode=mode, **fixed))  # type: ignore[arg-type]
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:
        # Nothing of the operation can be made invalid (no parameters, no body).
        assert mode is GenerationMode.NEGATIVE, op


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(stack: StackRunner) -> None:
    stack.init("tenant.compaction_period='0s'", "tenant.gc_period='0s'")
    stack.start()
    base_url = f"http://127.0.0.1:{stack.status()['services']['housekeeping']['http_port']}"
    session = requests.Session()
    token = os.environ.get("PAGESTORE_AUTH_TOKEN")  # a stack with auth on
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    # A tenant with an (empty) timeline, so generated requests also reach existing objects.
    assert session.post(f"{base_url}/v1/tenant", json={"new_tenant_id": KNOWN_TENANT},
                        timeout=30).status_code == 201
    assert session.post(f"{base_url}/v1/tenant/{KNOWN_TENANT}/timeline",
                        json={"new_timeline_id": KNOWN_TIMELINE}, timeout=30).status_code == 201
    schema = schemathesis.openapi.from_path(SPEC)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 20
    seen: dict[int, int] = {}
    for op in operations:
        _run(op, base_url, GenerationMode.POSITIVE, session, seen)
        _run(op, base_url, GenerationMode.NEGATIVE, session, seen)
        params = {p.name for p in op.path_parameters}
        if "tenant_id" in params:
            fixed = {"tenant_id": KNOWN_TENANT}
            if "timeline_id" in params:
                fixed["timeline_id"] = KNOWN_TIMELINE
            _run(op, base_url, GenerationMode.POSITIVE, session, seen, path_parameters=fixed)
    print("status codes seen:", dict(sorted(seen.items())))
    # The run reached both sides: answers that worked and refusals of bad input.
    assert any(200 <= code < 300 for code in seen), seen
    assert seen.get(400, 0) > 0 and seen.get(404, 0) > 0, seen
    assert not [code for code in seen if code >= 500], seen

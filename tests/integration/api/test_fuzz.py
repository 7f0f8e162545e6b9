"""schemathesis against the live server's OpenAPI document (TLS, an admin token): no 5xx, and
every answer conforms to the document (status code, content type, body schema); invalid input
(negative mode) is refused with a 4xx.

Fuzzed: every GET (but the endless event stream), and every change on instances, operations and
tokens. The root has no image, so a launch fails fast. Changes of images, networks and storage
are left out: at random they build images, make bridges and pools on the host."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.apiserver import Server
from tests.integration.api.conftest import make_token

EXAMPLES = 12  # per operation and mode: the whole run stays under a minute
ENDLESS = {"/1.0/events", "/1.0/instances/{name}/export"}
CHANGES = {
    ("POST", "/1.0/instances"), ("DELETE", "/1.0/instances/{name}"), ("PATCH", "/1.0/instances/{name}"),
    ("POST", "/1.0/instances/{name}/exec"), ("POST", "/1.0/instances/{name}/{action}"),
    ("DELETE", "/1.0/operations/{operation_id}"), ("POST", "/1.0/tokens"), ("DELETE", "/1.0/tokens/{name}"),
}  # fmt: skip
ADMIN = "fuzz-admin-do-not-touch"
CONFORMANCE = [content_type_conformance, response_schema_conformance]
POSITIVE = [not_a_server_error, status_code_conformance, *CONFORMANCE]
NEGATIVE = [not_a_server_error, negative_data_rejection, *CONFORMANCE]


@pytest.fixture
def fuzzed(servers: Callable[..., Server], api_root: Path, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    server = servers(api_root, tls=tmp_path / "tls")
    yield server, make_token(api_root, ADMIN, "admin")
    assert server.process.poll() is None, "the server died under the fuzzer"


def test_fuzz_the_openapi_document(fuzzed: tuple[Server, str]) -> None:
    server, token = fuzzed
    assert server.cert is not None
    document = f"{server.url}/1.0/openapi.json"
    schema = schemathesis.openapi.from_url(document, verify=str(server.cert), timeout=30)
    session = requests.Session()
    session.verify = str(server.cert)
    session.headers["Authorization"] = f"Bearer {token}"
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [
        operation
        for operation in operations
        if operation.path not in ENDLESS
        and (operation.method.upper() == "GET" or (operation.method.upper(), operation.path) in CHANGES)
    ]
    assert len(operations) >= 20, [operation.label for operation in operations]
    began = time.monotonic()
    with session:  # closed at the end: a connection left open holds the server's shutdown up
        for operation in operations:
            for mode, checks in ((GenerationMode.POSITIVE, POSITIVE), (GenerationMode.NEGATIVE, NEGATIVE)):
                try:
                    _fuzzer(operation, mode, checks, server, session)()
                except Unsatisfiable:  # nothing to make invalid: the operation takes no input
                    assert mode is GenerationMode.NEGATIVE, operation.label
        assert time.monotonic() - began < 90
        # The admin token the fuzzer was given still works: it revoked nothing it should not have.
        info = session.get(f"{server.url}/1.0", timeout=10, verify=str(server.cert)).json()
        assert info["caller"]["name"] == ADMIN


def _fuzzer(
    operation: Any, mode: GenerationMode, checks: list[Any], server: Server, session: requests.Session
) -> Callable[[], None]:
    """The hypothesis test of one operation in one mode: each case sent, its answer checked."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server.url, session=session, checks=checks, timeout=30,
                               verify=str(server.cert))  # fmt: skip

    test: Callable[[], None] = fuzz
    return test

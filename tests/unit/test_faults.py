"""Which failures of a step are the infrastructure's for now, and which will repeat."""

from __future__ import annotations

import datetime

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import MaxRetryError

from agenttest import faults, kubeapi, lifecycle
from agenttest.models import AgentTestStatus, Backend, CaseResult, Execution, Phase

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def client_error(code: str, status: int) -> ClientError:
    answer = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, "RunTask")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        ApiException(status=503),
        ApiException(status=429),
        ConnectionRefusedError(),
        TimeoutError(),
        MaxRetryError(None, "/api"),  # type: ignore[arg-type]
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        client_error("ThrottlingException", 400),
        client_error("InternalError", 500),
    ],
)
def test_the_infrastructure_failing_for_now_is_transient(error: Exception) -> None:
    assert faults.transient(error)


def _validation_error() -> ValidationError:
    try:
        CaseResult.model_validate({"name": "x", "passed": "maybe"})
    except ValidationError as error:
        return error
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Invalid isoformat string"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        KeyError("cases"),
        ApiException(status=422),
        ApiException(status=403),
        client_error("AccessDeniedException", 400),
        _validation_error(),
    ],
)
def test_errors_that_would_repeat_are_not(error: Exception) -> None:
    assert not faults.transient(error)


def test_a_status_refused_for_its_size_becomes_a_minimal_error() -> None:
    status = AgentTestStatus(
        phase=Phase.RUNNING,
        attempt=2,
        backend=Backend.POD,
        execution=Execution(backend=Backend.POD, id="ns/at-x", started_at="2026-01-01T00:00:00Z"),
        log_tail="x" * 1000,
        cases=[CaseResult(name="a", passed=True)],
        observed_generation=3,
    )
    minimal = lifecycle.too_large(status, T0)
    assert minimal.phase == Phase.ERROR and "too large" in (minimal.message or "")
    assert (minimal.attempt, minimal.observed_generation) == (2, 3)
    assert minimal.log_tail is None and minimal.cases == []


@pytest.mark.parametrize(
    ("status", "body", "too_large"),
    [
        (413, "Request entity too large: limit is 3145728", True),
        (500, "etcdserver: request is too large", True),
        (422, "metadata.annotations: Too long: may not be more than 262144 bytes", False),
        (500, "internal error", False),
    ],
)
def test_size_refusals_are_told_apart(status: int, body: str, too_large: bool) -> None:
    assert kubeapi._too_large(status, body) is too_large

"""Publishing failures that end for good and ones retried; names and labels the API accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError
from kubernetes.client.exceptions import ApiException

from agenttest import kubeapi, objects
from agenttest.models import AgentTest, AgentTestSpec, AgentTestStatus
from agenttest.objects import TEST_LABEL, label_value
from agenttest.publishing import api_refusal, package_input, package_name
from agenttest.s3objects import RETRY_MAX_SECONDS, retry_delay, s3_refusal

ROOT = Path(__file__).resolve().parents[2]

# The API server's rules (k8s.io/apimachinery validation).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def s3_error(status: int, code: str, operation: str = "PutObject") -> ClientError:
    """What botocore raises for an S3 error answer."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": "said S3"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    "name",
    [
        "n" * 62 + "-tail",  # the 63rd character is "-"
        "n" * 62 + ".tail",  # ... or "."
        "n" * 61 + "--tail",
        "a" * 253,
        "short",
        "dotted.name-1",
    ],
)
def test_label_values_from_any_valid_name_are_valid(name: str) -> None:
    value = objects.test_label(name)[TEST_LABEL]
    assert len(value) <= 63 and LABEL_VALUE.match(value), value
    assert name.startswith(value)


def test_short_names_are_their_own_label_value() -> None:
    assert label_value("dotted.name-1") == "dotted.name-1"
    assert label_value("n" * 62 + "-tail") == "n" * 62


@pytest.mark.parametrize("cut_at", [".", "-"])
def test_package_names_stay_valid_where_the_cut_falls_on_a_separator(cut_at: str) -> None:
    name = "a" * 249 + cut_at + "b" * 3  # 253 characters; the cut keeps 250
    for attempt in (1, 12):
        package = package_name(name, attempt)
        assert len(package) <= 253 and DNS_SUBDOMAIN.match(package), package
        assert package.endswith(f"-a{attempt}")
    assert package_name("ships", 1) == "ships-a1"


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AccessDenied"), (404, "NoSuchBucket"), (400, "InvalidArgument"), (400, "KMS.Disabled")],
)
def test_s3_refusals_are_permanent(status: int, code: str) -> None:
    refusal = s3_refusal(s3_error(status, code), "store s3://b/k")
    assert refusal is not None
    assert refusal.reason == "UploadRefused"
    assert code in refusal.message and "s3://b/k" in refusal.message


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "SlowDown"),
        (500, "InternalError"),
        (429, "TooManyRequests"),
        (400, "RequestTimeout"),
        (400, "ExpiredToken"),
        (403, "RequestTimeTooSkewed"),
        (409, "OperationAborted"),
    ],
)
def test_s3_throttling_and_server_errors_are_transient(status: int, code: str) -> None:
    assert s3_refusal(s3_error(status, code), "store s3://b/k") is None


def test_errors_without_an_answer_are_transient() -> None:
    assert s3_refusal(ConnectionResetError("reset by peer"), "store") is None
    assert api_refusal(ConnectionResetError("reset by peer"), "it") is None


def test_api_server_4xx_are_permanent_with_its_message() -> None:
    body = json.dumps({"kind": "Status", "message": 'metadata.labels: Invalid value: "x-"'})
    refusal = api_refusal(ApiException(status=422, reason="Unprocessable Entity"), "pkg")
    assert refusal is not None and refusal.reason == "PackageRefused"
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = body
    refusal = api_refusal(error, "DeploymentPackage ns/pkg")
    assert refusal is not None
    assert 'Invalid value: "x-"' in refusal.message and "ns/pkg" in refusal.message
    assert api_refusal(ApiException(status=403, reason="Forbidden"), "pkg") is not None
    assert api_refusal(kubeapi.Gone("not found"), "pkg") is not None


@pytest.mark.parametrize("status", [401, 429, 500, 503, 504])
def test_api_server_throttling_and_5xx_are_transient(status: int) -> None:
    assert api_refusal(ApiException(status=status, reason="later"), "pkg") is None


def test_retries_back_off_doubling_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[:3] == [2.0, 4.0, 8.0]
    assert delays == sorted(delays)
    assert delays[-1] == RETRY_MAX_SECONDS


def test_a_package_carries_the_specs_cases_for_its_regression_suite() -> None:
    sample = ROOT / "manifests" / "samples" / "agenttest.yaml"
    spec = AgentTestSpec.model_validate(yaml.safe_load(sample.read_text())["spec"])
    status = AgentTestStatus(attempt=1, environment=["strands-agents==1.2.3"])
    test = AgentTest("u-1", "team-a", "hello-agent", 1, spec, status)
    inp = package_input(test, "source", "2026-01-01T00:00:00Z")
    assert [(case["name"], case["query"]) for case in inp.suite] == [
        ("greets", "Say hello to the user."),
        ("knows-capitals", "What is the capital of France?"),
    ]
    assert inp.suite[1]["expect"]["notContains"] == ["London"]

"""Pure parts of the pod backend: the pod it builds, what a pod status means, log cursors."""

from __future__ import annotations

import json
from typing import Any

from agenttest.backends.pod import (
    execution_secret_manifest,
    pod_manifest,
    pod_observation,
    split_timestamped,
)
from agenttest.executions import ExecutionKey, ExecutionState, LaunchRequest

REQUEST = LaunchRequest(
    key=ExecutionKey("0123abcd-0000-0000-0000-00000000beef", 2),
    namespace="team",
    test_name="hello",
    runner_config={"cases": []},
    timeout_seconds=60,
    cpu="500m",
    memory="1Gi",
)


def test_the_pod_meets_the_restricted_profile_and_is_owned_by_the_test() -> None:
    pod = pod_manifest(REQUEST, "agenttest/runner:1", runtime_class="gvisor")
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 90
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {
        "cpu": "500m",
        "memory": "1Gi",
        "ephemeral-storage": "2Gi",
    }
    assert pod["metadata"]["labels"]["agenttest.dev/role"] == "runner"
    [owner] = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "AgentTest",
        REQUEST.key.uid,
        True,
    )
    secret = execution_secret_manifest(REQUEST)
    assert secret["metadata"]["name"] == pod["metadata"]["name"] == REQUEST.key.name
    # agent.py travels in the Secret, never a ConfigMap; only config.json becomes a file.
    assert json.loads(secret["stringData"]["config.json"]) == REQUEST.runner_config
    assert spec["volumes"][0]["secret"] == {
        "secretName": REQUEST.key.name,
        "items": [{"key": "config.json", "path": "config.json"}],
    }
    assert not any("configMap" in volume for volume in spec["volumes"])


def pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"status": {"phase": phase, **status}}


def test_pending_reasons_surface() -> None:
    waiting = pod(
        "Pending",
        containerStatuses=[
            {
                "state": {
                    "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
                }
            }
        ],
    )
    observation = pod_observation(waiting)
    assert observation.state == ExecutionState.STARTING
    assert observation.reason == "ImagePullBackOff: Back-off pulling image"
    unschedulable = pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available",
            }
        ],
    )
    assert pod_observation(unschedulable).reason.startswith("Unschedulable: 0/1 nodes")


def test_terminations() -> None:
    done = pod(
        "Succeeded",
        containerStatuses=[{"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
    )
    assert (pod_observation(done).state, pod_observation(done).exit_code) == (
        ExecutionState.EXITED,
        0,
    )
    oom = pod_observation(
        pod(
            "Failed",
            containerStatuses=[{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        )
    )
    assert (oom.exit_code, oom.reason) == (137, "OOMKilled")
    deadline = pod_observation(pod("Failed", reason="DeadlineExceeded", message="too long"))
    assert deadline.timed_out and deadline.reason.startswith("DeadlineExceeded")
    evicted = pod_observation(pod("Failed", reason="Evicted", message="node low on memory"))
    assert evicted.state == ExecutionState.MISSING and evicted.infra_failure


def test_log_cursor_repeats_nothing_and_drops_nothing() -> None:
    first = (
        "2026-01-01T00:00:01.5Z a\n"
        "2026-01-01T00:00:02.000000001Z b\n"
        "2026-01-01T00:00:02.000000001Z c\n"
    )
    lines, cursor = split_timestamped(first, None)
    assert lines == ["a", "b", "c"]
    # A later read starts early (sinceSeconds is coarse) and brings a new line
    # with the same timestamp as the last two.
    again = first + "2026-01-01T00:00:02.000000001Z d\n2026-01-01T00:00:03Z e\n"
    lines, cursor = split_timestamped(again, cursor)
    assert lines == ["d", "e"]
    assert split_timestamped(again, cursor) == ([], cursor)


def test_trimmed_nanoseconds_compare_as_numbers() -> None:
    _, cursor = split_timestamped("2026-01-01T00:00:02.9Z late\n", None)
    assert split_timestamped("2026-01-01T00:00:02.10Z earlier\n", cursor)[0] == []


def test_model_credentials_reach_the_judges_environment_only() -> None:
    from dataclasses import replace

    token = "s3cr3t-model-token"
    request = replace(REQUEST, run_key="ab" * 32, model_credentials={"default": {"token": token}})
    pod = pod_manifest(request, "agenttest/runner:1")
    secret = execution_secret_manifest(request)
    # In the execution's own Secret, never a literal of the pod spec (readable by
    # whoever may read pods) ...
    assert json.loads(secret["stringData"]["modelCredentials"]) == {"default": {"token": token}}
    assert token not in json.dumps(pod)
    (container,) = pod["spec"]["containers"]
    [variable] = [e for e in container["env"] if e["name"] == "AGENTTEST_MODEL_CREDENTIALS"]
    assert variable["valueFrom"] == {
        "secretKeyRef": {"name": request.key.name, "key": "modelCredentials"}
    }
    # ... and never a file: the config volume projects config.json alone. The judge
    # takes the variable out of its environment and starts the agent host with a
    # scrubbed one (confine.scrubbed_environment).
    [config_volume] = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert [item["key"] for item in config_volume["secret"]["items"]] == ["config.json"]


def test_no_credentials_no_variable() -> None:
    pod = pod_manifest(REQUEST, "agenttest/runner:1")
    (container,) = pod["spec"]["containers"]
    assert "AGENTTEST_MODEL_CREDENTIALS" not in {e["name"] for e in container["env"]}
    assert "modelCredentials" not in execution_secret_manifest(REQUEST)["stringData"]

from __future__ import annotations

import pytest

from agenttest import cli, leadership
from agenttest.models import Backend
from agenttest.settings import Settings


def test_defaults_work_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.max_running == 10
    assert settings.enable_local_backend is False
    assert settings.log_tail_bytes == 8192


def test_environment_then_overrides() -> None:
    env = {
        "AGENTTEST_MAX_RUNNING": "3",
        "AGENTTEST_ENABLE_LOCAL_BACKEND": "true",
        "AGENTTEST_NAMESPACES": "a, b",
        "AGENTTEST_DEFAULT_BACKEND": "local",
    }
    settings = Settings.from_env(env, poll_interval=0.5)
    assert settings.max_running == 3
    assert settings.enable_local_backend is True
    assert settings.namespaces == ("a", "b")
    assert settings.default_backend is Backend.LOCAL
    assert settings.poll_interval == 0.5


@pytest.mark.parametrize(
    "name,value",
    [("MAX_RUNNING", "many"), ("DEFAULT_BACKEND", "lambda"), ("ENABLE_LOCAL_BACKEND", "maybe")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"AGENTTEST_{name}"):
        Settings.from_env({f"AGENTTEST_{name}": value})


def test_flags_override_the_environment_without_touching_it() -> None:
    env = {"AGENTTEST_MAX_RUNNING": "3", "AGENTTEST_POLL_INTERVAL": "2"}
    settings = Settings.from_flags(
        {"max_running": "7", "enable_local_backend": "true", "poll_interval": None}, env
    )
    assert (settings.max_running, settings.enable_local_backend) == (7, True)
    assert settings.poll_interval == 2.0  # no flag: the variable holds
    assert env == {"AGENTTEST_MAX_RUNNING": "3", "AGENTTEST_POLL_INTERVAL": "2"}
    with pytest.raises(ValueError, match="AGENTTEST_MAX_RUNNING"):
        Settings.from_flags({"max_running": "many"}, {})


def test_leader_election_is_off_unless_asked_for() -> None:
    settings = Settings.from_env({})
    assert settings.leader_election is False
    assert settings.leader_lease == "agenttest-operator"
    env = {
        "AGENTTEST_LEADER_ELECTION": "true",
        "AGENTTEST_LEADER_LEASE": "mine",
        "AGENTTEST_LEASE_DURATION_SECONDS": "15",
        "AGENTTEST_LEASE_RENEW_SECONDS": "2.5",
    }
    settings = Settings.from_env(env)
    assert settings.leader_election is True
    assert settings.leader_lease == "mine"
    assert settings.lease_duration_seconds == 15
    assert settings.lease_renew_seconds == 2.5
    leadership.check(settings.lease_duration_seconds, settings.lease_renew_seconds)


@pytest.mark.parametrize("duration,renew", [(10, 6), (10, 0), (0, 0.1), (3, 2)])
def test_a_holder_must_get_two_renewals_per_lease(duration: int, renew: float) -> None:
    with pytest.raises(ValueError, match="lease_"):
        leadership.check(duration, renew)


def test_agenttest_run_refuses_bad_lease_timings_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "run",
        "--leader-election",
        "--lease-duration-seconds",
        "4",
        "--lease-renew-seconds",
        "3",
    ]
    assert cli.main(argv) == 2
    assert "lease_renew_seconds=3.0" in capsys.readouterr().err

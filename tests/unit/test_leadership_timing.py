"""leadership.py without a cluster: what a replica warms up before it contends."""

from __future__ import annotations

import re
from pathlib import Path

from agenttest import leadership

SOURCE = Path(leadership.__file__).parent


def test_every_kubernetes_api_class_the_operator_uses_is_warmed_up_before_leading() -> None:
    # One left out would be imported (seconds of CPU under the GIL) while the
    # replica leads, and could starve its renewals.
    used = {
        name
        for path in SOURCE.rglob("*.py")
        for name in re.findall(r"\bclient\.([A-Z]\w*Api)\b", path.read_text())
    }
    assert used, "the scan found no API class at all"
    assert used <= set(leadership.CLIENT_APIS), used - set(leadership.CLIENT_APIS)

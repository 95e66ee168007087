"""The chart's values.schema.json knows exactly the operator's settings.

`settings:` in the chart's values becomes AGENTTEST_<NAME> variables, and the
schema rejects a name settings.py does not have (a typo would otherwise be
ignored by the operator without a word). So the schema must list every field
of Settings, with the type the operator parses it as, and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from agenttest.models import Backend
from agenttest.settings import Settings

SCHEMA = (
    Path(__file__).resolve().parents[2]
    / "manifests"
    / "helm"
    / "agenttest-operator"
    / "values.schema.json"
)


def expected_property(kind: str) -> dict[str, Any]:
    """The JSON schema of a value settings._parse accepts for a field of this type."""
    if kind.startswith("tuple"):
        # A list (joined with commas by the chart) or the comma-separated text.
        return {"type": ["array", "string"], "items": {"type": "string"}}
    if kind == "Backend":
        return {"enum": [backend.value for backend in Backend]}
    return {"type": {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}[kind]}


def test_schema_lists_every_setting_with_its_type_and_nothing_else() -> None:
    settings = json.loads(SCHEMA.read_text())["properties"]["settings"]
    expected = {
        field.name: expected_property(str(field.type)) for field in dataclasses.fields(Settings)
    }
    assert settings["additionalProperties"] is False
    assert settings["properties"] == expected, (
        "values.schema.json's settings differ from operator/agenttest/settings.py; "
        f"its properties should be:\n{json.dumps(expected, indent=2)}"
    )

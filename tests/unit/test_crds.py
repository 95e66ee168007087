"""The committed CRDs are exactly what the generator makes from the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agenttest import crdgen

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    for name, document in crdgen.all_crds().items():
        committed = (CRDS / name).read_text()
        assert committed == crdgen.render(document), f"{name} drifted: run `make crds`"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert crdgen.main([str(tmp_path), "--check"]) == 1
    assert crdgen.main([str(tmp_path)]) == 0
    assert crdgen.main([str(tmp_path), "--check"]) == 0
    first = next(tmp_path.iterdir())
    first.write_text(first.read_text() + "# edited by hand\n")
    assert crdgen.main([str(tmp_path), "--check"]) == 1


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        found += _walk(schema["items"], f"{path}[]")
    return found


def _schema(kind_file: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / kind_file).read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_every_field_has_a_description_and_no_json_schema_leftovers() -> None:
    for kind_file in ("agenttest.dev_agenttests.yaml", "agenttest.dev_deploymentpackages.yaml"):
        for path, node in _walk(_schema(kind_file)):
            if path in ("", ".metadata") or path.endswith("[]"):
                continue
            assert node.get("description"), f"{kind_file}{path} has no description"
            assert not {"$ref", "anyOf", "title", "$defs"} & node.keys(), path


def test_structural_rules_are_in_the_schema() -> None:
    spec = _schema("agenttest.dev_agenttests.yaml")["properties"]["spec"]["properties"]
    assert spec["timeoutSeconds"]["minimum"] == 1 and spec["timeoutSeconds"]["maximum"] == 600
    assert spec["cases"]["minItems"] == 1 and spec["cases"]["maxItems"] == 50
    assert spec["cases"]["x-kubernetes-list-map-keys"] == ["name"]
    assert spec["backend"]["enum"] == ["fargate", "pod", "local"]
    assert spec["agent"]["properties"]["source"]["properties"]["inline"]["maxLength"] == 262144
    rules = [r["rule"] for r in spec["model"]["x-kubernetes-validations"]]
    assert "self.provider != 'bedrock' || has(self.region)" in rules

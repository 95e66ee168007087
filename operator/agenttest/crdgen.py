"""Generate the CustomResourceDefinitions in `crds/` from the pydantic models.

`python -m agenttest.crdgen [--check] [DIR]` writes (or, with --check,
compares) one YAML file per kind, the way controller-gen does for Go types.
The pydantic JSON schema is rewritten into a Kubernetes structural schema:
references inlined, `X | None` flattened, titles dropped, numeric exclusive
bounds turned into OpenAPI v3.0 booleans.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from agenttest import models

Schema = dict[str, Any]

CATEGORY = "agenttesting"

# Keywords a structural schema may carry; anything else pydantic emits is dropped.
_KEPT = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "additionalProperties",
    "nullable",
}


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        # A field's own description says more than the class docstring.
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _resolve({**branches[0], **rest}, defs)
    return node


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON-schema node into a structural schema node."""
    node = _resolve(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "default":
            if value is not None and value != [] and value != {}:
                out["default"] = value
        elif key in _KEPT or key.startswith("x-kubernetes-"):
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out:
        out["type"] = "object"
    return out


def schema_of(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True)
    return structural(raw, raw.get("$defs", {}))


def _columns(*columns: tuple[str, str, str, str, int]) -> list[Schema]:
    return [
        {"name": name, "type": kind, "jsonPath": path, "description": description}
        | ({"priority": priority} if priority else {})
        for name, kind, path, description, priority in columns
    ]


AGENTTEST_COLUMNS = _columns(
    ("Phase", "string", ".status.phase", "Lifecycle phase", 0),
    ("Backend", "string", ".status.backend", "Execution backend", 0),
    ("Model", "string", ".spec.model.modelId", "Model under test", 0),
    ("Cases", "string", ".status.casesPassed", "Cases passed / total", 0),
    ("Queue", "integer", ".status.queuePosition", "Position in the queue while Queued", 0),
    ("Age", "date", ".metadata.creationTimestamp", "Time since creation", 0),
    ("Duration", "string", ".status.duration", "Execution time of the finished attempt", 0),
    ("Attempt", "integer", ".status.attempt", "Attempt number", 1),
    ("Message", "string", ".status.message", "Why the test is in its phase", 1),
)

PACKAGE_COLUMNS = _columns(
    ("Test", "string", ".spec.agentTestRef.name", "The AgentTest it came from", 0),
    ("Attempt", "integer", ".spec.agentTestRef.attempt", "The attempt that passed", 0),
    ("URI", "string", ".spec.s3Uri", "Where the package is", 0),
    ("Size", "integer", ".spec.sizeBytes", "Size in bytes", 0),
    ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready", 0),
    ("Age", "date", ".metadata.creationTimestamp", "Time since creation", 0),
)


def crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[Schema],
    initial_phase: str | None = None,
) -> Schema:
    status_schema = schema_of(status)
    if initial_phase is not None:
        # The API server fills these in when it serves an object that has no status
        # yet, so the first row of `kubectl get -w` shows the phase, not a blank.
        status_schema["default"] = {}
        status_schema["properties"]["phase"]["default"] = initial_phase
    root: Schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": schema_of(spec),
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{models.GROUP}",
            "annotations": {"agenttest.dev/generated-by": "agenttest.crdgen (make crds)"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                # Not "agenttest": kubectl expands categories before it matches
                # names, so that would break `kubectl get agenttest NAME`.
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def all_crds() -> dict[str, Schema]:
    """File name -> CRD, for every kind of the API."""
    return {
        f"{models.GROUP}_{models.AGENTTEST_PLURAL}.yaml": crd(
            kind="AgentTest",
            plural=models.AGENTTEST_PLURAL,
            short_names=["at"],
            description=(
                "AgentTest runs a Strands agent against test cases in an isolated execution "
                "and, when every case passes, packages it for deployment."
            ),
            spec=models.AgentTestSpec,
            status=models.AgentTestStatus,
            columns=AGENTTEST_COLUMNS,
            initial_phase=models.Phase.PENDING.value,
        ),
        f"{models.GROUP}_{models.PACKAGE_PLURAL}.yaml": crd(
            kind="DeploymentPackage",
            plural=models.PACKAGE_PLURAL,
            short_names=["dpkg"],
            description="DeploymentPackage points at the deployable artifact of a passing test.",
            spec=models.DeploymentPackageSpec,
            status=models.DeploymentPackageStatus,
            columns=PACKAGE_COLUMNS,
        ),
    }


def render(document: Schema) -> str:
    header = "# Generated by `make crds` from operator/agenttest/models.py. Do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default="crds", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the files differ")
    args = parser.parse_args(argv)
    stale = []
    for name, document in all_crds().items():
        path = args.directory / name
        text = render(document)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("CRDs are out of date, run `make crds`: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

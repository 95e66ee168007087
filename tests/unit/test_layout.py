"""What ships: the wheel (and so both images) holds the operator, not the development kit."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_packages_leave_out_the_development_kit() -> None:
    # The same search setuptools runs for [tool.setuptools.packages.find]
    # (namespaces are on by default there).
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    packages = find_namespace_packages(
        where=str(ROOT / find["where"][0]), include=find.get("include", ["*"])
    )
    assert "agenttest" in packages
    assert "agenttest.runner" in packages
    assert not [name for name in packages if name.split(".")[0] != "agenttest"]

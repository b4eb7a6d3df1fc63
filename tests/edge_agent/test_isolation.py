"""The edge agent installs and runs on its own: it must never import the platform's services/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGE = REPO / "edge-agent"
ALLOWED_TOP_LEVEL = {
    # stdlib is checked separately; these are edge-agent/requirements.txt plus generated protos
    "grpc", "google", "pymodbus", "sunspec2", "pydantic", "pydantic_settings", "prometheus_client",
    "vpp", "vpp_edge",
}


def imported_modules(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_vpp_edge_imports_only_its_requirements() -> None:
    services = {p.name for p in (REPO / "services").iterdir() if p.is_dir()} | {
        p.stem for p in (REPO / "services").glob("*.py")
    }
    for name in sorted(imported_modules(EDGE / "vpp_edge")):
        top = name.split(".")[0]
        assert top not in services or top in ALLOWED_TOP_LEVEL, f"vpp_edge imports services module {name}"
        assert top in sys.stdlib_module_names or top in ALLOWED_TOP_LEVEL, f"unexpected dependency {name}"
    assert not any(n.split(".")[0] == "vpp_devsim" for n in imported_modules(EDGE / "vpp_edge"))


def test_requirements_cover_third_party_imports() -> None:
    reqs = (EDGE / "requirements.txt").read_text().lower()
    for dist in ("grpcio", "protobuf", "pymodbus", "pysunspec2", "pydantic", "pydantic-settings", "prometheus-client"):
        assert dist in reqs


@pytest.mark.timeout(30)
def test_runtime_import_loads_nothing_from_services() -> None:
    code = (
        "import sys, vpp_edge.__main__, vpp_edge.agent\n"
        f"bad = [m for m, mod in sys.modules.items() if (getattr(mod, '__file__', '') or '').startswith("
        f"{str(REPO / 'services')!r})]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=25)
    assert out.stdout.strip() == ""

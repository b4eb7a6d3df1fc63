"""The alerting rules are valid PromQL and fire when they should (promtool, the real tool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RULES = HERE.parents[1] / "charts" / "vpp" / "files" / "alerts.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make tools` (apt-get install prometheus)")
    return path


def test_rules_are_valid() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_fire_when_they_should() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yaml"], capture_output=True, text=True, timeout=60, cwd=HERE
    )
    assert out.returncode == 0, out.stdout + out.stderr

"""Shared fixtures: a real Tansu broker over TCP on a loopback port chosen at run time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpp_devtools.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = Path(tmp_path_factory.mktemp("tansu")) / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings objects read the environment: make sure a developer's shell cannot leak in."""
    for key in list(os.environ):
        if key.startswith(("VPP_", "KAFKA_")):
            monkeypatch.delenv(key)

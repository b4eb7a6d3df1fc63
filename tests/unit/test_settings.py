"""Configuration errors say which variable is wrong, before anything starts."""

from __future__ import annotations

import pytest

from aggregation.settings import AggregationSettings
from vpp_common.app import run_service


def never_built(app: object, settings: object) -> None:
    raise AssertionError("the service must not be built with bad settings")


@pytest.mark.usefixtures("clean_env")
def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPP_GRPC_PORT", "not-a-port")
    with pytest.raises(SystemExit) as info:
        run_service(AggregationSettings, never_built)
    assert "VPP_GRPC_PORT" in str(info.value)


@pytest.mark.usefixtures("clean_env")
def test_bootstrap_servers_need_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-without-port")
    with pytest.raises(SystemExit) as info:
        run_service(AggregationSettings, never_built)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(info.value)


@pytest.mark.usefixtures("clean_env")
def test_defaults_are_valid_and_kafka_env_is_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    settings = AggregationSettings()
    assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.source.startswith("aggregation/")

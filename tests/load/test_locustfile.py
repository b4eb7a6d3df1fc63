"""The locustfile's interceptor and user against a tiny real gRPC server (the standard health service).

Importing Locust normally monkey-patches the whole process for gevent, which would leak into the
other tests of the session; the in-process tests import it with LOCUST_SKIP_MONKEY_PATCH, and one
test runs the locustfile the way Locust does (patched, gevent-mode grpc) in a child interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CHECK = "/grpc.health.v1.Health/Check"


class MetadataRecorder(grpc.ServerInterceptor):
    """Keeps the metadata of every call the server receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        self.seen.append({k: str(v) for k, v in handler_call_details.invocation_metadata or ()})
        return continuation(handler_call_details)


@pytest.fixture(scope="module")
def locustfile() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        if "locust" not in sys.modules:
            mp.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        spec = importlib.util.spec_from_file_location("vpp_locustfile", LOCUSTFILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def recorder() -> MetadataRecorder:
    return MetadataRecorder()


@pytest.fixture(scope="module")
def health_server(recorder: MetadataRecorder) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[recorder])
    servicer = health.HealthServicer()
    servicer.set("vpp.test", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture()
def env_and_calls(locustfile: ModuleType) -> tuple[Any, list[dict[str, Any]]]:
    from locust.env import Environment

    environment = Environment()
    calls: list[dict[str, Any]] = []
    environment.events.request.add_listener(lambda **kwargs: calls.append(kwargs))
    return environment, calls


@pytest.fixture()
def stub(
    locustfile: ModuleType, health_server: str, env_and_calls: tuple[Any, list[dict[str, Any]]]
) -> Iterator[health_pb2_grpc.HealthStub]:
    raw, channel = locustfile.intercepted_channel(health_server, env_and_calls[0])
    yield health_pb2_grpc.HealthStub(channel)
    raw.close()


def test_successful_call_is_reported(
    stub: health_pb2_grpc.HealthStub, env_and_calls: tuple[Any, list[dict[str, Any]]]
) -> None:
    _, calls = env_and_calls
    response = stub.Check(health_pb2.HealthCheckRequest(service="vpp.test"), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    (call,) = calls
    assert call["request_type"] == "grpc"
    assert call["name"] == CHECK
    assert call["exception"] is None
    assert call["response_length"] == response.ByteSize() > 0
    assert 0 <= call["response_time"] < 5000
    assert call["context"] == {"code": "OK", "synthetic": True}


def test_failed_call_is_reported_and_raised(
    locustfile: ModuleType, stub: health_pb2_grpc.HealthStub, env_and_calls: tuple[Any, list[dict[str, Any]]]
) -> None:
    _, calls = env_and_calls
    with pytest.raises(grpc.RpcError) as raised:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.service"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    (call,) = calls
    assert call["name"] == CHECK
    assert isinstance(call["exception"], locustfile.RpcStatusError)
    assert call["exception"].code == grpc.StatusCode.NOT_FOUND
    assert call["response_length"] == 0


def test_expected_error_is_a_success_under_its_own_name(
    locustfile: ModuleType, stub: health_pb2_grpc.HealthStub, env_and_calls: tuple[Any, list[dict[str, Any]]]
) -> None:
    _, calls = env_and_calls
    options = locustfile.call_options(f"{CHECK} [NOT_FOUND]", [grpc.StatusCode.NOT_FOUND])
    with pytest.raises(grpc.RpcError):
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.service"), timeout=5, metadata=options)
    (call,) = calls
    assert call["name"] == f"{CHECK} [NOT_FOUND]"
    assert call["exception"] is None
    assert call["context"]["code"] == "NOT_FOUND"


def test_unexpected_success_is_a_failure(
    locustfile: ModuleType, stub: health_pb2_grpc.HealthStub, env_and_calls: tuple[Any, list[dict[str, Any]]]
) -> None:
    _, calls = env_and_calls
    options = locustfile.call_options("bad request", [grpc.StatusCode.INVALID_ARGUMENT])
    stub.Check(health_pb2.HealthCheckRequest(service="vpp.test"), timeout=5, metadata=options)
    (call,) = calls
    assert call["name"] == "bad request"
    assert isinstance(call["exception"], locustfile.ExpectationError)
    assert "INVALID_ARGUMENT" in str(call["exception"])


def test_calls_are_tagged_and_control_metadata_stripped(
    locustfile: ModuleType, stub: health_pb2_grpc.HealthStub, recorder: MetadataRecorder
) -> None:
    recorder.seen.clear()
    options = [*locustfile.call_options("named", [grpc.StatusCode.OK]), ("x-request-id", "abc")]
    stub.Check(health_pb2.HealthCheckRequest(service="vpp.test"), timeout=5, metadata=options)
    (metadata,) = recorder.seen
    assert metadata["x-vpp-synthetic"] == "locust"
    assert metadata["x-request-id"] == "abc"
    assert not [key for key in metadata if key.startswith("x-locust-")]


def test_user_runs_only_tasks_with_a_target(
    locustfile: ModuleType,
    health_server: str,
    env_and_calls: tuple[Any, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment, calls = env_and_calls
    for name in locustfile.TARGET_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VPP_LOAD_BIDDING", health_server)  # a server without the bidding API
    user = locustfile.VppApiUser(environment)
    user.on_start()
    try:
        assert {t.__name__ for t in user.tasks} == {"build_bids", "build_bids_rejected"}
        user.build_bids()
        user.build_bids_rejected()
    finally:
        user.on_stop()
    assert [c["name"] for c in calls] == [
        "/vpp.v1.BiddingService/BuildBids",
        "/vpp.v1.BiddingService/BuildBids [INVALID_ARGUMENT]",
    ]
    # The health-only server answers UNIMPLEMENTED: a failure for both, reported, not raised.
    assert [str(c["exception"]) for c in calls] == ["UNIMPLEMENTED: Method not found!"] * 2


def test_user_without_targets_stops(
    locustfile: ModuleType, env_and_calls: tuple[Any, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from locust.exception import StopUser

    for name in locustfile.TARGET_ENV.values():
        monkeypatch.delenv(name, raising=False)
    user = locustfile.VppApiUser(env_and_calls[0])
    with pytest.raises(StopUser):
        user.on_start()


def test_interceptor_under_gevent_in_a_locust_process(health_server: str) -> None:
    """As Locust runs it: monkey-patched process, gevent-mode grpc, the call inside a greenlet."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        import gevent
        import locust  # patches the process, as the locust CLI does
        from locust.env import Environment
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        spec = importlib.util.spec_from_file_location("vpp_locustfile", {str(LOCUSTFILE)!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        env = Environment()
        calls = []
        env.events.request.add_listener(lambda **kw: calls.append(kw))

        def run():
            raw, channel = mod.intercepted_channel({health_server!r}, env)
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(service="vpp.test"), timeout=5)
            raw.close()

        gevent.spawn(run).get(timeout=10)
        (call,) = calls
        assert call["name"] == "/grpc.health.v1.Health/Check", call
        assert call["exception"] is None, call["exception"]
        print("ok")
        """
    )
    child_env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=child_env, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

"""Locust load for the platform's gRPC APIs.

    VPP_LOAD_AGGREGATION=127.0.0.1:50051 VPP_LOAD_GATEWAY=127.0.0.1:50052 \\
        locust -f tests/load/locustfile.py --headless -u 20 -r 5 -t 2m

Targets (host:port) come from ``VPP_LOAD_AGGREGATION``, ``VPP_LOAD_DISPATCH``, ``VPP_LOAD_BIDDING``,
``VPP_LOAD_FORECASTING`` and ``VPP_LOAD_GATEWAY``; tasks whose target is unset are left out. Optional:
``VPP_LOAD_SITE_IDS`` (comma-separated; otherwise the gateway's connected sites are used),
``VPP_LOAD_ACTIVATION_IDS`` (comma-separated) and ``VPP_LOAD_TIMEOUT_S`` (per-call deadline, default 5).

Every call goes through :class:`LocustInterceptor`, which reports it to ``events.request``. Calls are
tagged as synthetic with ``x-vpp-synthetic: locust`` metadata. A call may name itself and say which
status codes it expects (``x-locust-name``, ``x-locust-expect``; both are stripped before sending):
a deliberately bad request that comes back INVALID_ARGUMENT is a success under its own name, and one
that comes back OK is a failure.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent
from gevent import monkey
from google.protobuf.message import Message
from locust import User, between, events, tag, task
from locust.env import Environment
from locust.exception import StopUser
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    bidding_pb2,
    bidding_pb2_grpc,
    common_pb2,
    dispatch_api_pb2,
    dispatch_api_pb2_grpc,
    forecasting_pb2,
    forecasting_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

# Under Locust (which monkey-patches the process for gevent) grpc's blocking calls must yield to
# gevent too. Imported without the patch (LOCUST_SKIP_MONKEY_PATCH, unit tests), grpc stays as is.
if monkey.is_module_patched("socket"):
    grpc_gevent.init_gevent()

logger = logging.getLogger(__name__)

NAME_KEY = "x-locust-name"
EXPECT_KEY = "x-locust-expect"
SYNTHETIC = ("x-vpp-synthetic", "locust")

TARGET_ENV = {
    "aggregation": "VPP_LOAD_AGGREGATION",
    "dispatch": "VPP_LOAD_DISPATCH",
    "bidding": "VPP_LOAD_BIDDING",
    "forecasting": "VPP_LOAD_FORECASTING",
    "gateway": "VPP_LOAD_GATEWAY",
}

Metadata = Sequence[tuple[str, str | bytes]]


class ExpectationError(Exception):
    """A call ended with a status its caller did not expect (e.g. OK for a deliberately bad request)."""


class RpcStatusError(Exception):
    """A failed call as Locust reports it: status code and details, grouped by them in the error report."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class CallDetails(_CallDetails, grpc.ClientCallDetails):
    """Concrete ``grpc.ClientCallDetails`` so the interceptor can rewrite the metadata."""


def call_options(name: str | None = None, expect: Iterable[grpc.StatusCode] = ()) -> list[tuple[str, str]]:
    """Metadata asking the interceptor to report the call as ``name`` and to accept ``expect`` codes."""
    metadata: list[tuple[str, str]] = []
    if name:
        metadata.append((NAME_KEY, name))
    codes = [code.name for code in expect]
    if codes:
        metadata.append((EXPECT_KEY, ",".join(codes)))
    return metadata


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Reports every unary call (name, response time, response length, exception) to Locust."""

    def __init__(self, environment: Environment) -> None:
        self.env = environment

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        name = client_call_details.method
        expect: set[str] = set()
        metadata: list[tuple[str, str | bytes]] = [SYNTHETIC]
        for key, value in client_call_details.metadata or ():
            if key == NAME_KEY:
                name = str(value)
            elif key == EXPECT_KEY:
                expect = set(str(value).split(","))
            else:
                metadata.append((key, value))
        details = CallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout,
            metadata=metadata,
            credentials=client_call_details.credentials,
            wait_for_ready=getattr(client_call_details, "wait_for_ready", None),
            compression=getattr(client_call_details, "compression", None),
        )

        start_time = time.time()
        started = time.perf_counter()
        response: Message | None = None
        exception: Exception | None = None
        code = grpc.StatusCode.OK
        call = continuation(details, request)
        try:
            response = call.result()
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            message = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
            exception = RpcStatusError(code, message)
        response_time = (time.perf_counter() - started) * 1000

        if expect:
            if code.name in expect:
                exception = None
            elif exception is None:
                exception = ExpectationError(f"expected {'|'.join(sorted(expect))}, got {code.name}")
        self.env.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=response_time,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context={"code": code.name, "synthetic": True},
            exception=exception,
            start_time=start_time,
            url=client_call_details.method,
        )
        return call


def intercepted_channel(target: str, environment: Environment) -> tuple[grpc.Channel, grpc.Channel]:
    """The raw channel (to close) and the intercepted one (for stubs)."""
    raw = grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    return raw, grpc.intercept_channel(raw, LocustInterceptor(environment))


T = TypeVar("T", bound=Callable[..., Any])


def needs(service: str) -> Callable[[T], T]:
    """Marks a task as needing ``service``'s target; the task is left out when it is unset."""

    def mark(fn: T) -> T:
        fn.vpp_service = service  # type: ignore[attr-defined]
        return fn

    return mark


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


class VppApiUser(User):
    """Reads the platform's query APIs the way dashboards and the bidding desk do."""

    wait_time = between(0.2, 1.0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.timeout_s = float(os.environ.get("VPP_LOAD_TIMEOUT_S", "5"))
        self.targets = {svc: os.environ[env] for svc, env in TARGET_ENV.items() if os.environ.get(env)}
        self._channels: list[grpc.Channel] = []
        self.site_ids: list[str] = _env_list("VPP_LOAD_SITE_IDS")
        self.activation_ids: list[str] = _env_list("VPP_LOAD_ACTIVATION_IDS")
        self.aggregation: aggregation_pb2_grpc.AggregationServiceStub | None = None
        self.dispatch: dispatch_api_pb2_grpc.DispatchServiceStub | None = None
        self.bidding: bidding_pb2_grpc.BiddingServiceStub | None = None
        self.forecasting: forecasting_pb2_grpc.ForecastingServiceStub | None = None
        self.gateway: gateway_pb2_grpc.EdgeGatewayStub | None = None

    def on_start(self) -> None:
        if not self.targets:
            raise StopUser(f"set at least one of {', '.join(TARGET_ENV.values())} (host:port)")
        # Only the tasks whose service has a target (and that survived --tags filtering).
        self.tasks = [t for t in type(self).tasks if getattr(t, "vpp_service", None) in self.targets]
        channels: dict[str, grpc.Channel] = {}
        for service, target in self.targets.items():
            raw, channel = intercepted_channel(target, self.environment)
            self._channels.append(raw)
            channels[service] = channel
        if "aggregation" in channels:
            self.aggregation = aggregation_pb2_grpc.AggregationServiceStub(channels["aggregation"])
        if "dispatch" in channels:
            self.dispatch = dispatch_api_pb2_grpc.DispatchServiceStub(channels["dispatch"])
        if "bidding" in channels:
            self.bidding = bidding_pb2_grpc.BiddingServiceStub(channels["bidding"])
        if "forecasting" in channels:
            self.forecasting = forecasting_pb2_grpc.ForecastingServiceStub(channels["forecasting"])
        if "gateway" in channels:
            self.gateway = gateway_pb2_grpc.EdgeGatewayStub(channels["gateway"])
            if not self.site_ids:
                sites = self._call(self.gateway.ListConnectedSites, gateway_pb2.ListConnectedSitesRequest())
                if sites is not None:
                    self.site_ids = [site.site_id for site in sites.sites]

    def on_stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def _call(self, method: Callable[..., Any], request: Message, metadata: Metadata = ()) -> Any:
        """Calls through the interceptor; failures are already reported, so the task goes on."""
        try:
            return method(request, timeout=self.timeout_s, metadata=list(metadata))
        except grpc.RpcError:
            return None

    @tag("aggregation")
    @needs("aggregation")
    @task(5)
    def portfolio_flexibility(self) -> None:
        assert self.aggregation is not None
        request = aggregation_pb2.GetPortfolioFlexibilityRequest(interval_minutes=random.choice([15, 15, 60]))
        self._call(self.aggregation.GetPortfolioFlexibility, request)

    @tag("aggregation")
    @needs("aggregation")
    @task(3)
    def site_flexibility(self) -> None:
        assert self.aggregation is not None
        if not self.site_ids:
            return
        request = aggregation_pb2.GetSiteFlexibilityRequest(site_id=random.choice(self.site_ids))
        self._call(self.aggregation.GetSiteFlexibility, request)

    @tag("forecasting")
    @needs("forecasting")
    @task(3)
    def forecast(self) -> None:
        assert self.forecasting is not None
        request = forecasting_pb2.GetForecastRequest(
            site_id=random.choice(["", *self.site_ids]),  # "" is the portfolio
            stream=random.choice(
                [common_pb2.FORECAST_STREAM_PV, common_pb2.FORECAST_STREAM_LOAD, common_pb2.FORECAST_STREAM_NET]
            ),
            horizon_minutes=random.choice([60, 240, 1440]),
            quantiles=[0.1, 0.5, 0.9],
        )
        self._call(self.forecasting.GetForecast, request)

    @tag("bidding")
    @needs("bidding")
    @task(2)
    def build_bids(self) -> None:
        assert self.bidding is not None
        request = bidding_pb2.BuildBidsRequest(
            portfolio_id=random.choice(["eu-north", "jp-kanto"]),
            publish=False,  # never reaches the market
        )
        self._call(self.bidding.BuildBids, request)

    @tag("bidding")
    @needs("bidding")
    @task(1)
    def build_bids_rejected(self) -> None:
        """An unknown portfolio must be refused with INVALID_ARGUMENT, reported on its own line."""
        assert self.bidding is not None
        request = bidding_pb2.BuildBidsRequest(portfolio_id="no-such-portfolio", publish=False)
        options = call_options(
            "/vpp.v1.BiddingService/BuildBids [INVALID_ARGUMENT]", [grpc.StatusCode.INVALID_ARGUMENT]
        )
        self._call(self.bidding.BuildBids, request, options)

    @tag("dispatch")
    @needs("dispatch")
    @task(2)
    def activation_tracking(self) -> None:
        assert self.dispatch is not None
        if self.activation_ids:
            request = dispatch_api_pb2.GetActivationTrackingRequest(
                activation_id=random.choice(self.activation_ids), last_n=20
            )
            self._call(self.dispatch.GetActivationTracking, request)
            return
        # No activation to look at: exercise the lookup path with an id nobody issued.
        request = dispatch_api_pb2.GetActivationTrackingRequest(activation_id=f"locust-{random.getrandbits(32):08x}")
        options = call_options(
            "/vpp.v1.DispatchService/GetActivationTracking [unknown id]",
            [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK],
        )
        self._call(self.dispatch.GetActivationTracking, request, options)

    @tag("gateway")
    @needs("gateway")
    @task(1)
    def connected_sites(self) -> None:
        assert self.gateway is not None
        sites = self._call(self.gateway.ListConnectedSites, gateway_pb2.ListConnectedSitesRequest())
        if sites is not None and sites.sites and not _env_list("VPP_LOAD_SITE_IDS"):
            self.site_ids = [site.site_id for site in sites.sites]


@events.test_start.add_listener
def _log_targets(environment: Environment, **_kwargs: Any) -> None:
    configured = {svc: os.environ[env] for svc, env in TARGET_ENV.items() if os.environ.get(env)}
    missing = [env for svc, env in TARGET_ENV.items() if svc not in configured]
    logger.info("vpp load targets=%s skipped=%s", configured, missing)

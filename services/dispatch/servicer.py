"""``vpp.v1.DispatchService`` over the tracking view every replica builds."""

from __future__ import annotations

import grpc
from pydantic import BaseModel, Field
from vpp.v1 import dispatch_api_pb2, dispatch_api_pb2_grpc

from dispatch.tracking import TrackingView
from vpp_common.grpc_server import validated

SERVICE_NAME = "vpp.v1.DispatchService"


class TrackingRequest(BaseModel):
    activation_id: str = Field(min_length=1, max_length=128)
    last_n: int = Field(ge=0, le=100_000)


class DispatchServicer(dispatch_api_pb2_grpc.DispatchServiceServicer):
    def __init__(self, tracking: TrackingView) -> None:
        self.tracking = tracking

    async def GetActivationTracking(
        self, request: dispatch_api_pb2.GetActivationTrackingRequest, context: grpc.aio.ServicerContext
    ) -> dispatch_api_pb2.GetActivationTrackingResponse:
        req = await validated(
            TrackingRequest, {"activation_id": request.activation_id, "last_n": request.last_n}, context
        )
        resp = self.tracking.response(req.activation_id, req.last_n)
        if resp is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"activation_id: unknown activation {req.activation_id!r}")
        assert resp is not None
        return resp

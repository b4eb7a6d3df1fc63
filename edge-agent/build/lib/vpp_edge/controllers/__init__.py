"""Controller layer: logic only; each adds constraints, the power solver decides."""

from vpp_edge.controllers.base import Controller, CycleContext
from vpp_edge.controllers.dispatch import DispatchController
from vpp_edge.controllers.safety import SafetyController
from vpp_edge.controllers.self_consumption import SelfConsumptionController

__all__ = ["Controller", "CycleContext", "DispatchController", "SafetyController", "SelfConsumptionController"]

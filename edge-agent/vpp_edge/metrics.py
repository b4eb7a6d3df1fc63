"""Prometheus metrics of one agent, in their own registry (no module globals, testable)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_RTT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EdgeMetrics:
    """All metric families the agent exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.modbus_rtt_seconds = Histogram(
            "vpp_edge_modbus_rtt_seconds", "Modbus request round trip", ["op"], buckets=_RTT_BUCKETS_S, registry=r
        )
        self.modbus_errors = Counter("vpp_edge_modbus_errors_total", "Failed Modbus requests", ["op"], registry=r)
        self.cycle_duration_seconds = Histogram(
            "vpp_edge_cycle_duration_seconds", "Read-control-write cycle duration", buckets=_RTT_BUCKETS_S, registry=r
        )
        self.cycle_overruns = Counter("vpp_edge_cycle_overruns_total", "Cycles that overran their period", registry=r)
        self.read_failures = Counter("vpp_edge_read_failures_total", "Cycles whose device read failed", registry=r)
        self.device_available = Gauge("vpp_edge_device_available", "1 when the last device read succeeded", registry=r)
        self.setpoints_written = Counter("vpp_edge_setpoints_written_total", "Battery setpoints written", registry=r)
        self.setpoint_write_failures = Counter(
            "vpp_edge_setpoint_write_failures_total", "Battery setpoint writes that failed", registry=r
        )
        self.setpoint_kw = Gauge("vpp_edge_setpoint_kw", "Battery setpoint last written, > 0 discharge", registry=r)
        self.clamps = Counter(
            "vpp_edge_clamps_total", "Setpoints clamped by the power envelope", ["source"], registry=r
        )
        self.controller_errors = Counter(
            "vpp_edge_controller_errors_total", "Controller runs that raised", ["controller"], registry=r
        )
        self.commands_received = Counter("vpp_edge_commands_received_total", "Dispatch commands received", registry=r)
        self.commands_expired = Counter(
            "vpp_edge_commands_expired_total", "Dispatch commands expired on arrival or while active", registry=r
        )
        self.commands_rejected = Counter("vpp_edge_commands_rejected_total", "Dispatch commands rejected", registry=r)
        self.commands_duplicate = Counter(
            "vpp_edge_commands_duplicate_total", "Dispatch commands dropped as duplicates", registry=r
        )
        self.commands_refused = Counter(
            "vpp_edge_commands_refused_total",
            "Fenced dispatch commands refused: (leader_epoch, seq) already applied, or a stale leader_epoch",
            ["reason"],
            registry=r,
        )
        self.command_latency_seconds = Histogram(
            "vpp_edge_command_apply_seconds", "Command arrival to Modbus write completed", buckets=_RTT_BUCKETS_S,
            registry=r,
        )
        self.uplink_connected = Gauge("vpp_edge_uplink_connected", "1 while the gateway stream is up", registry=r)
        self.uplink_reconnects = Counter("vpp_edge_uplink_reconnects_total", "Gateway stream reconnects", registry=r)
        self.uplink_outbox_size = Gauge("vpp_edge_uplink_outbox_size", "Messages awaiting gateway ack", registry=r)
        self.uplink_outbox_dropped = Counter(
            "vpp_edge_uplink_outbox_dropped_total", "Telemetry dropped because the outbox was full", registry=r
        )
        self.uplink_sent = Counter("vpp_edge_uplink_messages_sent_total", "Messages sent", ["kind"], registry=r)
        self.uplink_received = Counter(
            "vpp_edge_uplink_messages_received_total", "Messages received", ["kind"], registry=r
        )
        self.uplink_refusals = Counter("vpp_edge_uplink_refusals_total", "Refusals from the gateway", registry=r)

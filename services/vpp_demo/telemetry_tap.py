"""Read the telemetry topic as any outside tool would, to plot what the sites really did."""

from __future__ import annotations

import threading
from collections import defaultdict

from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from vpp.v1 import envelope_pb2
from vpp_common.topics import TELEMETRY


class TelemetryTap:
    def __init__(self, bootstrap_servers: str) -> None:
        self.series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # t, battery kW, soc %
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
        tps = [TopicPartition(TELEMETRY.name, p) for p in range(TELEMETRY.partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TelemetryTap:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                for r in records:
                    env = envelope_pb2.Envelope.FromString(r.value)
                    t = env.telemetry
                    with self._lock:
                        self.series[t.site_id].append(
                            (t.measured_at.ToNanoseconds() / 1e9, t.battery_power_kw, t.soc_pct)
                        )
        self._consumer.close()

    def snapshot(self) -> dict[str, list[tuple[float, float, float]]]:
        with self._lock:
            return {k: sorted(v) for k, v in self.series.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

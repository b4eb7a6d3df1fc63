"""Read the telemetry topic as any outside tool would, to plot what the sites really did."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from vpp.v1 import envelope_pb2

from vpp_common.topics import TELEMETRY


class TelemetryTap:
    def __init__(self, bootstrap_servers: str, record_arrival: bool = False) -> None:
        self.series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # t, battery kW, soc %
        self._record_arrival = record_arrival
        self._latencies_s: list[float] = []
        self._pipeline_s: list[float] = []
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50
        )
        partitions = self._consumer.partitions_for_topic(TELEMETRY.name) or set()
        tps = [TopicPartition(TELEMETRY.name, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        # Not seek_to_end (Tansu's ListOffsets(latest) is wrong): read all, time only what is new.
        self._consumer.seek_to_beginning(*tps)
        self._since_s = time.time()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TelemetryTap:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                for r in records:
                    arrived_s = time.time()
                    env = envelope_pb2.Envelope.FromString(r.value)
                    produced_s = env.produced_at.ToNanoseconds() / 1e9
                    recent = self._record_arrival and produced_s > self._since_s
                    if recent:
                        self._pipeline_s.append(arrived_s - produced_s)
                    for rec in env.telemetry_batch.records:
                        t = rec.telemetry
                        if recent:
                            self._latencies_s.append(arrived_s - t.measured_at.ToNanoseconds() / 1e9)
                        with self._lock:
                            self.series[t.site_id].append(
                                (t.measured_at.ToNanoseconds() / 1e9, t.battery_power_kw, t.soc_pct)
                            )
        self._consumer.close()

    def snapshot(self) -> dict[str, list[tuple[float, float, float]]]:
        with self._lock:
            return {k: sorted(v) for k, v in self.series.items()}

    def latencies_s(self) -> list[float]:
        """Device read (agent clock) to arrival here, for each record seen while recording arrivals."""
        with self._lock:
            return list(self._latencies_s)

    def pipeline_latencies_s(self) -> list[float]:
        """The gateway's Kafka write (Envelope.produced_at) to arrival here, one per record."""
        with self._lock:
            return list(self._pipeline_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

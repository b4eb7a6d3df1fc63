"""Metrics every service exposes from day one. One process is one service, so no service label:
Prometheus adds ``job``/``instance`` when it scrapes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

KAFKA_CONSUMED = Counter("vpp_kafka_records_consumed_total", "Kafka records consumed", ["topic"])
KAFKA_PRODUCED = Counter("vpp_kafka_records_produced_total", "Kafka records acknowledged by the broker", ["topic"])
KAFKA_PRODUCE_ERRORS = Counter("vpp_kafka_produce_errors_total", "Kafka produce failures", ["topic"])
KAFKA_DEAD_LETTERED = Counter(
    "vpp_kafka_records_dead_lettered_total", "Records sent to the dead-letter topic", ["topic", "reason"]
)
KAFKA_PROCESSING_SECONDS = Histogram(
    "vpp_kafka_processing_seconds", "Time to process one consumed record", ["topic"], buckets=LATENCY_BUCKETS_S
)
KAFKA_RECORD_AGE_SECONDS = Histogram(
    "vpp_kafka_record_age_seconds",
    "Envelope produced_at to processing start (end-to-end event latency)",
    ["topic"],
    buckets=LATENCY_BUCKETS_S,
)
KAFKA_COMMITTED_OFFSET = Gauge(
    "vpp_kafka_committed_offset",
    "Last committed offset (compare with producers' counts for lag)",
    ["topic", "partition"],
)
KAFKA_CONSUMER_LAG = Gauge(
    "vpp_kafka_consumer_lag_records",
    "High watermark (from the last fetch) minus the next offset to handle",
    ["topic", "partition"],
)
KAFKA_PARTITIONS_OWNED = Gauge(
    "vpp_kafka_partitions_owned", "Partitions this replica's consumer group member owns", ["consumer", "topic"]
)
CONSUMER_UP = Gauge("vpp_kafka_consumer_up", "1 while the consumer runs, 0 once it died", ["consumer"])
GRPC_REQUESTS = Counter("vpp_grpc_requests_total", "gRPC requests handled", ["method", "code"])
GRPC_LATENCY = Histogram(
    "vpp_grpc_request_seconds", "gRPC request handling time", ["method"], buckets=LATENCY_BUCKETS_S
)
SERVICE_UP = Gauge("vpp_service_up", "1 while the service is serving", ["service"])
LOOP_LAG = Histogram(
    "vpp_event_loop_lag_seconds",
    "How late the event loop ran a 250 ms timer: every request and record waits this long behind a busy loop",
    buckets=LATENCY_BUCKETS_S,
)
GC_PAUSE = Histogram(
    "vpp_gc_pause_seconds", "Cyclic garbage collections (the whole process stops)", ["generation"],
    buckets=LATENCY_BUCKETS_S,
)

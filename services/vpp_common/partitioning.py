"""Which partition a site's records live in: Kafka's default partitioner (murmur2 of the key), so a
record keyed by the site id and a batch written explicitly to the site's partition land together."""

from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2


@lru_cache(maxsize=262_144)
def site_partition(site_id: str, partitions: int) -> int:
    """The partition of ``site_id`` among ``partitions`` (same as the Java client's default partitioner)."""
    return (murmur2(site_id.encode()) & 0x7FFFFFFF) % partitions

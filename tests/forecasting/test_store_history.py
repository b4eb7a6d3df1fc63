"""The history store on SQLite and on a real PostgreSQL server: one test body, both databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from forecasting.store import SLOT, HistoryStore, Measurement, StoreUnavailable, slot_start_s
from vpp_common.validation import normalise_store_url

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def meas(message_id: str, minute: float, pv: float | None, load: float | None, site: str = "s1") -> Measurement:
    return Measurement(message_id, site, T0 + timedelta(minutes=minute), pv, load)


def frame(store: HistoryStore, site: str = "s1", slots: int = 4) -> pd.DataFrame:
    start = pd.Timestamp(T0)
    return store.history(site, start, start + slots * SLOT)


def test_samples_aggregate_to_15_minute_slot_means(store: HistoryStore) -> None:
    assert store.add_measurement(meas("m1", 0, 2.0, 1.0))
    assert store.add_measurement(meas("m2", 5, 4.0, 3.0))
    assert store.add_measurement(meas("m3", 14.99, 6.0, 5.0))
    assert store.add_measurement(meas("m4", 15, 10.0, 1.5))  # next slot
    got = frame(store)
    assert list(got.index) == list(pd.date_range(pd.Timestamp(T0), periods=4, freq=SLOT))
    assert got["pv_kw"].iloc[0] == pytest.approx(4.0)
    assert got["load_kw"].iloc[0] == pytest.approx(3.0)
    assert got["pv_kw"].iloc[1] == pytest.approx(10.0)
    assert got.iloc[2:].isna().all().all()  # never measured: NaN, not 0


def test_redelivered_record_is_not_counted_twice(store: HistoryStore) -> None:
    assert store.add_measurement(meas("dup", 1, 2.0, 1.0))
    assert store.add_measurement(meas("other", 2, 4.0, 3.0))
    before = frame(store)
    for _ in range(3):
        assert not store.add_measurement(meas("dup", 1, 2.0, 1.0))
    # Same id, different content (a buggy producer): still the first delivery wins.
    assert not store.add_measurement(meas("dup", 1, 100.0, 100.0))
    pd.testing.assert_frame_equal(frame(store), before)
    assert frame(store)["pv_kw"].iloc[0] == pytest.approx(3.0)


def test_missing_quantity_does_not_drag_the_other_mean(store: HistoryStore) -> None:
    store.add_measurement(meas("a", 0, 2.0, None))
    store.add_measurement(meas("b", 1, None, 4.0))
    store.add_measurement(meas("c", 2, 4.0, 6.0))
    got = frame(store)
    assert got["pv_kw"].iloc[0] == pytest.approx(3.0)
    assert got["load_kw"].iloc[0] == pytest.approx(5.0)


def test_backfill_replaces_slots_and_is_idempotent(store: HistoryStore) -> None:
    index = pd.date_range(pd.Timestamp(T0), periods=4, freq=SLOT)
    data = pd.DataFrame({"pv_kw": [1.0, np.nan, 3.0, np.nan], "load_kw": [0.5, 0.6, np.nan, np.nan]}, index=index)
    assert store.put_slot_means("s1", data) == 3  # the all-NaN slot is not written
    assert store.put_slot_means("s1", data) == 3
    got = frame(store)
    np.testing.assert_allclose(got["pv_kw"].to_numpy(), [1.0, np.nan, 3.0, np.nan])
    np.testing.assert_allclose(got["load_kw"].to_numpy(), [0.5, 0.6, np.nan, np.nan])
    assert store.slot_count("s1") == 3
    assert store.last_slot("s1") == index[2]
    assert store.last_slot("nobody") is None


def test_sites_are_kept_apart(store: HistoryStore) -> None:
    store.add_measurement(meas("a", 0, 1.0, 1.0, site="s1"))
    store.add_measurement(meas("b", 0, 5.0, 7.0, site="s2"))
    both = store.history_many(["s1", "s2", "s3"], pd.Timestamp(T0), pd.Timestamp(T0) + SLOT)
    assert both["s1"]["load_kw"].iloc[0] == 1.0
    assert both["s2"]["load_kw"].iloc[0] == 7.0
    assert both["s3"].isna().all().all()


def test_dedupe_window_is_pruned(store: HistoryStore) -> None:
    store.add_measurement(meas("old", 0, 1.0, 1.0), now_s=1000.0)
    store.add_measurement(meas("new", 1, 3.0, 3.0), now_s=5000.0)
    assert store.prune_seen(older_than_s=2000.0) == 1
    # Past the window the id is forgotten (documented trade-off); the recent one still is not.
    assert not store.add_measurement(meas("new", 1, 3.0, 3.0))
    assert store.add_measurement(meas("old", 0, 1.0, 1.0))


def test_a_record_is_one_transaction_idempotent_per_message_id(store: HistoryStore) -> None:
    """``add_measurements``: one Kafka record's samples, all or nothing, each message id counted once."""
    record = [
        meas("b1", 0, 2.0, 1.0),
        meas("b2", 1, 4.0, None),
        meas("b1", 2, 100.0, 100.0),  # the same id again within the record: the first one counts
        meas("b3", 16, 5.0, 5.0, site="s2"),
    ]
    assert store.add_measurements(record) == 3
    assert store.add_measurements(record) == 0  # the record re-delivered
    assert store.add_measurements([meas("b2", 1, 4.0, None), meas("b4", 3, 6.0, 3.0)]) == 1
    got = frame(store)
    assert got["pv_kw"].iloc[0] == pytest.approx(4.0)  # (2 + 4 + 6) / 3
    assert got["load_kw"].iloc[0] == pytest.approx(2.0)  # (1 + 3) / 2: b2 measured no load
    assert frame(store, site="s2")["pv_kw"].iloc[1] == pytest.approx(5.0)
    # A failure half-way through rolls back everything, the seen ids included: a retry stores it all.
    bad = Measurement("c2", "s1", datetime(2025, 3, 10, 12, 5), 1.0, 1.0)  # naive time: refused
    with pytest.raises(ValueError, match="timezone-aware"):
        store.add_measurements([meas("c1", 4, 8.0, 8.0), bad])
    assert store.add_measurements([meas("c1", 4, 8.0, 8.0)]) == 1
    assert store.add_measurements([]) == 0


def test_concurrent_writers_and_readers(store: HistoryStore) -> None:
    """The service writes from one thread while the model thread reads; several writers are safe too
    (the database arbitrates: the store itself keeps no lock)."""
    errors: list[BaseException] = []

    def write(prefix: str) -> None:
        try:
            for i in range(40):
                store.add_measurement(meas(f"{prefix}{i}", i % 15, 1.0, 2.0))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in "abc"]
    for t in threads:
        t.start()
    for _ in range(10):
        frame(store)
    for t in threads:
        t.join()
    assert not errors
    assert frame(store)["pv_kw"].iloc[0] == pytest.approx(1.0)


def test_slot_start_needs_aware_time() -> None:
    assert slot_start_s(datetime(2025, 1, 1, 0, 14, 59, tzinfo=UTC)) == slot_start_s(datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        slot_start_s(datetime(2025, 1, 1))


def test_in_memory_sqlite_is_shared_across_threads() -> None:
    store = HistoryStore(normalise_store_url(":memory:"))
    store.create_schema()
    t = threading.Thread(target=store.add_measurement, args=(meas("x", 0, 1.0, 2.0),))
    t.start()
    t.join()
    assert frame(store)["load_kw"].iloc[0] == 2.0


def test_store_url_forms() -> None:
    assert normalise_store_url(":memory:") == "sqlite://"
    assert normalise_store_url("var/h.sqlite") == "sqlite:///var/h.sqlite"
    assert normalise_store_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_unreachable_database_says_which_setting_to_fix() -> None:
    store = HistoryStore("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(StoreUnavailable, match="VPP_STORE_URL"):
        store.create_schema()

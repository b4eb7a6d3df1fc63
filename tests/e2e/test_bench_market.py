"""``make bench-market`` reduced: 10 sites, 1 day. Checks the report's keys and internal consistency,
not the target values (those are the full bench's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vpp_demo import bench_market

KEYS = (
    "revenue",
    "penalties",
    "under_delivery_mtu_share",
    "perfect_foresight_revenue",
    "naive_revenue",
    "ratio_to_perfect_foresight",
    "ratio_to_naive",
    "sites",
    "days",
    "start",
    "currency",
    "confidence",
    "targets",
    "run_time_s",
    "residual_source",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    # kW-sized minimum bid: 10 sites offer tens of kW, the product's 1 MW minimum would leave no bid at all.
    # One backtest week keeps a cold residual cache to ~20 s; later runs read the cache.
    args = bench_market.build_parser().parse_args(
        ["--sites", "10", "--days", "1", "--min-bid-kw", "10", "--samples", "100", "--residual-weeks", "1",
         "--out", str(out)]
    )
    doc = bench_market.run(args, progress=lambda msg: None)
    return doc, out


def test_writes_json_markdown_and_plot_with_the_required_keys(report: tuple[dict, Path]) -> None:
    doc, out = report
    on_disk = json.loads((out / "market.json").read_text())
    for key in KEYS:
        assert key in on_disk, key
    assert on_disk["sites"] == 10 and on_disk["days"] == 1 and on_disk["start"] == "2018-06-04"
    assert on_disk["currency"] == "EUR" and on_disk["confidence"] == 0.95
    assert {"met", "value"} <= set(on_disk["targets"]["under_delivery_below_1pct_of_mtus"])
    assert len(on_disk["targets"]) == 3 and all(isinstance(t["met"], bool) for t in on_disk["targets"].values())
    md = (out / "market.md").read_text()
    assert "perfect foresight" in md and "Targets" in md
    assert (out / "market.png").stat().st_size > 1000
    assert doc["revenue"] == pytest.approx(on_disk["revenue"])


def test_figures_are_consistent(report: tuple[dict, Path]) -> None:
    doc, _ = report
    assert doc["penalties"] >= 0.0
    assert 0.0 <= doc["under_delivery_mtu_share"] <= 1.0
    ours = doc["ours"]
    assert doc["revenue"] == pytest.approx(ours["capacity_revenue"] + ours["energy_revenue"] - ours["penalties"])
    assert doc["revenue"] == pytest.approx(sum(d["revenue"] for d in doc["daily"]))
    assert doc["perfect_foresight_revenue"] == pytest.approx(sum(d["perfect_foresight_revenue"] for d in doc["daily"]))
    # Perfect foresight is the upper bound of what could be sold at the prices our run saw.
    assert doc["revenue"] <= doc["perfect_foresight_revenue"] + 1e-6
    assert doc["perfect_foresight"]["revenue_in_increments_at_least"] <= doc["perfect_foresight_revenue"] + 1e-6
    # Pay-as-bid: no award is paid above the clearing price it cleared at.
    assert ours["capacity_revenue"] <= ours["revenue_at_clearing_prices"] + 1e-6
    if doc["perfect_foresight_revenue"] > 0:
        assert doc["ratio_to_perfect_foresight"] == pytest.approx(doc["revenue"] / doc["perfect_foresight_revenue"])
    if doc["naive_revenue"] > 0:
        assert doc["ratio_to_naive"] == pytest.approx(doc["revenue"] / doc["naive_revenue"])
    else:
        assert doc["ratio_to_naive"] is None
    t = doc["targets"]
    assert t["under_delivery_below_1pct_of_mtus"]["met"] == (doc["under_delivery_mtu_share"] < 0.01)
    assert t["better_than_naive"]["met"] == (doc["revenue"] > doc["naive_revenue"])
    for a in doc["auctions"]:
        assert 0.0 <= a["awarded_kw"] <= a["bid_kw"] + 1e-9
        assert a["bid_kw"] <= a["offer_kw"] + 1e-9


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_market.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--sites", "--days", "--start", "--seed"):
        assert option in text

"""The forecast serving section of ``make bench``, reduced: a fleet forecasting process with real seeded
history next to a running aggregation, requests answered from the issue cycle's forecasts while the
trainer works (the figures are the benchmark's business; here the path must work end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpp_demo.forecast_serving import markdown, measure
from vpp_demo.stack import Stack

pytestmark = pytest.mark.slow


def test_fleet_forecasts_are_served_from_the_issue_cycle(tmp_path: Path) -> None:
    with Stack(tmp_path / "run", services=("aggregation",), sites=(), progress=lambda _: None) as stack:
        doc = measure(
            stack, tmp_path / "fleet", n_sites=25, seed_days=30, samples=20, production_sites=0, progress=lambda _: None
        )
    for key in ("get_forecast_site", "get_forecast_portfolio", "grpc_health_check"):
        assert doc[key]["n"] == 20 and doc[key]["median_ms"] > 0, doc[key]
    assert doc["first_issue_cycle_s"] > 0 and doc["sites"] == 25
    assert set(doc["targets"]) == {"get_forecast_site_p99_under_10_ms", "get_forecast_portfolio_p99_under_50_ms"}
    assert doc["platform_during_refit"]["health"]["n"] == 10
    assert any("Forecast serving" in line for line in markdown(doc))

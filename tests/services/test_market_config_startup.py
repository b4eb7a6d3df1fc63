"""A bad product or portfolio file stops a service at start-up, naming the file and the field, before
it touches Kafka or serves a call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpp_common.markets import MARKETS_DIR, PORTFOLIOS_FILE


def start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env}
    return subprocess.run([sys.executable, "-m", module], env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", ["bidding", "market", "dispatch"])
def test_a_bad_product_file_is_refused_at_start_up_naming_the_field(module: str, tmp_path: Path) -> None:
    markets = tmp_path / "markets"
    markets.mkdir()
    for f in MARKETS_DIR.glob("*.toml"):
        text = f.read_text()
        if f.name == "entsoe.toml":
            text = text.replace("min_bid_kw = 1000.0", "min_bid_kw = -1.0", 1)
        (markets / f.name).write_text(text)
    assert "min_bid_kw = -1.0" in (markets / "entsoe.toml").read_text()
    result = start(module, {"VPP_MARKETS_DIR": str(markets)})
    assert result.returncode != 0
    assert "entsoe.toml" in result.stderr and "min_bid_kw" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_portfolio_of_an_unknown_product_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "portfolios.toml"
    bad.write_text(PORTFOLIOS_FILE.read_text().replace('"SR2"', '"SR9"', 1))
    result = start("bidding", {"VPP_PORTFOLIOS_FILE": str(bad)})
    assert result.returncode != 0
    assert "portfolios.toml" in result.stderr and "products" in result.stderr and "SR9" in result.stderr, result.stderr

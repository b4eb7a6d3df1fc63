"""The market loop on a running stack, for both demo portfolios: forecast -> offers -> bids before gate
closure -> auction -> awards -> reservations -> activation -> delivery at the meters -> settlement.

Real gates are hours away (FCR and aFRR capacity close the day before at 08:00 and 09:00 in Berlin,
Japan's at 14:00 in Tokyo), so the demo bids the open blocks now and then asks the simulator to close
one block's gate early (``ClearAuction``: the TSO clears it at once) and to play that block's delivery
time-compressed (``DeliverBlock``: every 4-s step stands for block_s / duration of block time). Every
other part runs as it would in production: the offers read the forecasting service's quantiles and the
sites' live state, awards become reservations in the durable store, dispatch refuses activations that
do not fit their award, and the settlement is measured at the meters."""

from __future__ import annotations

import functools
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from vpp.v1 import bidding_pb2, bidding_pb2_grpc, market_api_pb2, market_api_pb2_grpc, market_pb2

from bidding.bids import direction_name
from vpp_common.markets import load_catalog
from vpp_common.topics import BIDS
from vpp_demo.stack import Stack, retry_warming

# What the demo delivers per portfolio: the product whose first awarded block is played.
DELIVER = {"eu-north": ("aFRR", "FCR", "mFRR"), "jp-kanto": ("SR2", "TR1")}


@dataclass
class PortfolioRun:
    portfolio_id: str
    currency: str
    offers: list[bidding_pb2.Offer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bids: list[market_pb2.Bid] = field(default_factory=list)
    awards: list[market_pb2.Award] = field(default_factory=list)
    cleared: list[market_api_pb2.ClearedDirection] = field(default_factory=list)
    reservations: list[market_pb2.Reservation] = field(default_factory=list)
    delivered_product: str = ""
    delivered_block: int = 0
    activation_ids: list[str] = field(default_factory=list)
    settlement: bidding_pb2.GetSettlementResponse | None = None


direction = direction_name  # one spelling of up / down / both for bids, logs and this print-out


def when(seconds: int, tz: str = "UTC") -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(seconds, UTC).astimezone(ZoneInfo(tz)).strftime("%a %H:%M %Z")


def run_market_loop(
    stack: Stack, say: Callable[[str], None], *, duration_s: int = 48, seed: int = 7
) -> dict[str, PortfolioRun]:
    catalog = load_catalog()
    bidding = bidding_pb2_grpc.BiddingServiceStub(stack.channel("bidding"))
    market = market_api_pb2_grpc.MarketSimulatorStub(stack.channel("market"))
    runs: dict[str, PortfolioRun] = {}
    for pid, portfolio in sorted(catalog.portfolios.items()):
        mkt = catalog.market(portfolio.market_id)
        run = runs[pid] = PortfolioRun(pid, portfolio.currency)
        request = bidding_pb2.GetOffersRequest(portfolio_id=pid)
        offers = retry_warming(functools.partial(bidding.GetOffers, request, timeout=60), timeout_s=180)
        run.offers, run.notes = list(offers.offers), list(offers.forecast_notes)
        say(
            f"\n{pid}: {mkt.name} ({portfolio.currency}), sites {', '.join(portfolio.sites)}; offers over "
            f"{portfolio.horizon_h} h deliverable with {portfolio.confidence:.0%} probability (joint forecast samples)"
        )
        say(f"  {'product':<8}{'dir':<6}{'blocks':>7}{'offer kW min/max':>19}{'P50 kW max':>12}{'energy-limited':>16}")
        by_key: dict[tuple[str, int], list[bidding_pb2.Offer]] = {}
        for o in run.offers:
            by_key.setdefault((o.product, o.direction), []).append(o)
        for (product, d), items in sorted(by_key.items()):
            say(
                f"  {product:<8}{direction(d):<6}{len(items):>7}"
                f"{min(o.offer_kw for o in items):>9.1f} /{max(o.offer_kw for o in items):>7.1f}"
                f"{max(o.p50_kw for o in items):>12.1f}{sum(o.energy_limited for o in items):>10}/{len(items)}"
            )
        if run.notes:
            say(f"  forecasts on fallback: {len(run.notes)} site streams (e.g. {run.notes[0]})")
        built = bidding.BuildBids(bidding_pb2.BuildBidsRequest(portfolio_id=pid, publish=True), timeout=60)
        run.bids = list(built.bids)
        now_s = time.time()
        earliest_gate = min((b.gate_closure.seconds for b in run.bids), default=0)
        say(
            f"  bids submitted: {len(run.bids)} (blocks past their gate skipped: {built.blocks_past_gate}); every one "
            f"before its gate (first gate {when(earliest_gate, mkt.timezone)}, "
            f"{(earliest_gate - now_s) / 3600:.1f} h from now)"
        )
        assert all(b.gate_closure.seconds > now_s for b in run.bids)
        for b in run.bids[:4]:
            say(
                f"    {b.product:<5}{direction(b.direction):<5} {when(b.interval_start.seconds, mkt.timezone):<14} "
                f"{b.capacity_kw:7.1f} kW at {b.capacity_price_per_mw_h:8.2f} {b.currency}/MW/h "
                f"(opportunity cost {b.opportunity_cost_per_mw_h:.2f})"
            )
        # The TSO will close one block's gate early and clear it
        # (the block with the most kW bid, of the first product in DELIVER's order that has bids)
        for product in DELIVER[pid]:
            sized: dict[int, float] = {}
            for b in run.bids:
                if b.product == product:
                    sized[b.interval_start.seconds] = sized.get(b.interval_start.seconds, 0.0) + b.capacity_kw
            if sized:
                run.delivered_product = product
                run.delivered_block = max(sorted(sized), key=lambda start: sized[start])
                break
    submitted = sum(len(r.bids) for r in runs.values())
    _wait_for(lambda: _bids_taken(stack) >= submitted, 30, "the market simulator to take every bid")
    for pid, run in sorted(runs.items()):
        portfolio = catalog.portfolio(pid)
        mkt = catalog.market(portfolio.market_id)
        if not run.delivered_product:
            say(f"\n{pid}: no bid to clear: nothing to deliver")
            continue
        say(f"\n{pid}: the TSO closes the gate of one {run.delivered_product} block now and clears it")
        request = market_api_pb2.ClearAuctionRequest(market_id=mkt.market_id, product=run.delivered_product)
        request.interval_start.FromSeconds(run.delivered_block)
        cleared = market.ClearAuction(request, timeout=30)
        run.awards, run.cleared = list(cleared.awards), list(cleared.cleared)
        for c in run.cleared:
            say(
                f"  auction {run.delivered_product} {direction(c.direction)} "
                f"{when(run.delivered_block, mkt.timezone)}: "
                f"demand {c.demand_kw:.0f} kW, accepted {c.accepted_kw:.0f} kW, clearing price "
                f"{c.clearing_price_per_mw_h:.2f} {portfolio.currency}/MW/h"
            )
        for a in run.awards:
            say(
                f"    award {a.award_id}: {direction(a.direction):<5}{a.awarded_kw:7.1f} kW at "
                f"{a.capacity_price_per_mw_h:.2f}{'  (' + a.reason + ')' if a.reason else ''}"
            )
    # Reservations are made by bidding from the awards topic; then both deliveries run at once.
    for run in runs.values():
        if not any(a.awarded_kw > 0 for a in run.awards):
            continue
        at = market_pb2.Reservation().interval_start
        at.FromSeconds(run.delivered_block)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = bidding.ListReservations(
                bidding_pb2.ListReservationsRequest(portfolio_id=run.portfolio_id, at=at), timeout=10
            ).reservations
            won = {a.award_id for a in run.awards if a.awarded_kw > 0}
            run.reservations = [r for r in held if r.award_id in won]
            if {r.award_id for r in run.reservations} >= won:
                break
            time.sleep(0.5)
        say(f"\n{run.portfolio_id}: reservations for {run.delivered_product} (capacity held per site, kW)")
        for r in run.reservations:
            say(f"    {r.site_id:<12}{direction(r.direction):<6}{r.reserved_kw:7.2f} kW, {r.energy_kwh:6.2f} kWh held")
    deliverable = [r for r in runs.values() if r.reservations]
    if deliverable:
        say(f"\nDelivering the awarded blocks time-compressed ({duration_s} s each, both portfolios at once) ...")

    def deliver(run: PortfolioRun) -> None:
        portfolio = catalog.portfolio(run.portfolio_id)
        request = market_api_pb2.DeliverBlockRequest(
            market_id=portfolio.market_id, product=run.delivered_product, duration_s=duration_s, seed=seed
        )
        request.interval_start.FromSeconds(run.delivered_block)
        response = market.DeliverBlock(request, timeout=duration_s + 120)
        run.activation_ids = list(response.activation_ids)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(deliver, deliverable))
    for run in deliverable:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = bidding.GetSettlement(bidding_pb2.GetSettlementRequest(portfolio_id=run.portfolio_id), timeout=10)
            if s.lines:
                run.settlement = s
                break
            time.sleep(0.5)
        print_settlement(run, say)
    return runs


def _bids_taken(stack: Stack) -> float:
    """Bid records the market simulator has consumed (its consumer metric for the bids topic)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(stack.metrics_urls()["market"], timeout=3) as resp:
            body = resp.read().decode()
    except OSError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "vpp_kafka_records_consumed_total" and sample.labels.get("topic") == BIDS.name
    )


def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def print_settlement(run: PortfolioRun, say: Callable[[str], None]) -> None:
    s = run.settlement
    if s is None:
        say(f"\n{run.portfolio_id}: no settlement arrived (see the market and bidding logs)")
        return
    cur = s.currency
    say(f"\n{run.portfolio_id}: settlement of {run.delivered_product} ({cur}; energy measured at the meters)")
    say(
        f"  {'MTU start (UTC)':<16}{'dir':<6}{'award kW':>9}{'req kWh':>9}{'deliv kWh':>10}{'capacity':>10}"
        f"{'energy':>9}{'penalty':>9}{'net':>10}"
    )
    for line in s.lines:
        say(
            f"  {datetime.fromtimestamp(line.mtu_start.seconds, UTC).strftime('%m-%d %H:%M'):<16}"
            f"{direction(line.direction):<6}{line.awarded_kw:>9.1f}{line.requested_kwh:>9.2f}{line.delivered_kwh:>10.2f}"
            f"{line.capacity_revenue:>10.3f}{line.energy_revenue:>9.3f}{line.penalty:>9.3f}{line.net_revenue:>10.3f}"
            + ("  under-delivered" if line.under_delivered else "")
        )
    say(
        f"  total: capacity {s.capacity_revenue:.3f} + energy {s.energy_revenue:.3f} - penalties {s.penalties:.3f} "
        f"= {s.net_revenue:.3f} {cur}"
    )
    shares: dict[str, float] = {}
    for line in s.lines:
        for share in line.site_shares:
            shares[share.site_id] = shares.get(share.site_id, 0.0) + share.revenue
    if shares:
        say("  per site: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shares.items())))


def plot_settlements(runs: dict[str, PortfolioRun], path: Path) -> Path | None:
    """Per portfolio: net revenue per MTU split into capacity, energy and penalty, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settled = [r for r in runs.values() if r.settlement is not None and r.settlement.lines]
    if not settled:
        return None
    fig, axes = plt.subplots(len(settled), 1, figsize=(10, 3.2 * len(settled)), squeeze=False)
    for ax, run in zip(axes[:, 0], settled, strict=True):
        assert run.settlement is not None
        lines = run.settlement.lines
        x = range(len(lines))
        cap = [line.capacity_revenue for line in lines]
        energy = [line.energy_revenue for line in lines]
        penalty = [-line.penalty for line in lines]
        ax.bar(x, cap, label="capacity", color="#4c72b0")
        ax.bar(x, energy, bottom=cap, label="energy", color="#55a868")
        ax.bar(x, penalty, label="penalty", color="#c44e52")
        ax.plot(x, [line.net_revenue for line in lines], "k.", label="net")
        ax.set_xticks(list(x))
        ax.set_xticklabels(
            [
                f"{datetime.fromtimestamp(line.mtu_start.seconds, UTC):%H:%M}\n{direction(line.direction)}"
                for line in lines
            ],
            fontsize=7,
        )
        ax.set_ylabel(run.settlement.currency)
        ax.set_title(f"{run.portfolio_id}: {run.delivered_product} settlement per MTU (UTC)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

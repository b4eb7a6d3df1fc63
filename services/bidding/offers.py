"""What a portfolio can offer per product, direction and block, deliverable with a stated probability.

Pure functions over arrays; the bidding service feeds them the forecasting service's joint samples of
each site's PV and load (``vpp_common.copula.joint_samples``: never a re-forecast, never sums of
quantiles) and each battery's live state.

Per sample (one joint draw of every site's PV and load over the horizon):
1. each battery follows its local control (self-consumption: it covers the site's net load, charges
   from its surplus, within power and energy limits): the **baseline path** of power and stored energy;
2. a site's headroom in a direction at a slot is what it can add to that baseline, limited by power
   (rating minus the baseline) and by energy: the offset must be sustainable for the product's
   ``sustain_s`` from the stored energy the baseline leaves, at every point of that window;
3. a block can offer only what every slot of it can (the activation may come at any time in it);
4. the portfolio's headroom is the sum over sites, sample by sample; the **offer is its
   (1 - confidence) quantile over the samples** (diversification between sites is real and is sold,
   which a sum of per-site quantiles would not see), capped at the sum of the sites' medians.
Products are sized one after another (longest block first, then the portfolio's order): each offer is
split over the sites (pro rata to their median headroom) and that split is **held** (power in its
direction, energy for its sustain time) in the block's slots before the next product is sized, so no
kW is sold twice across products or overlapping blocks. Awards already won enter the same way
(``Holdings.add``), so offers for later blocks shrink by what reservations hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from vpp.v1 import common_pb2

UP = common_pb2.DIRECTION_UP
DOWN = common_pb2.DIRECTION_DOWN
BOTH = common_pb2.DIRECTION_UNSPECIFIED  # a symmetric product: one offer covers up and down at once


@dataclass(frozen=True)
class SiteBattery:
    """A site's battery as its agent reports it (energies in kWh, powers in kW, > 0)."""

    site_id: str
    energy_kwh: float
    min_energy_kwh: float
    max_energy_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    efficiency: float = 0.95  # one way: AC kWh out per kWh stored, and stored per AC kWh in


@dataclass(frozen=True)
class ProductSlots:
    """What sizing needs of one product over the horizon (the caller aligns blocks in the market's zone)."""

    product_id: str
    directions: tuple[common_pb2.Direction, ...]  # UP and/or DOWN
    symmetric: bool
    sustain_s: int
    block_starts_s: tuple[int, ...]  # epoch seconds of each block start in the horizon
    block_s: int


@dataclass(frozen=True)
class OfferLine:
    product_id: str
    direction: common_pb2.Direction  # UP, DOWN, or BOTH for a symmetric product
    block_start_s: int
    block_end_s: int
    offer_kw: float  # deliverable with probability ``confidence``
    p50_kw: float
    reserved_kw: float  # already held by awards at the block's slots (portfolio, this direction)
    energy_limited: bool  # the stored energy, not the power, bounded the offer
    site_kw: dict[str, float] = field(default_factory=dict)  # offer_kw split over sites (sums to it)


@dataclass
class Holdings:
    """Capacity already committed per site and slot: power per direction and the energy held for it."""

    n_sites: int
    n_slots: int
    power_kw: dict[int, np.ndarray] = field(init=False)
    energy_kwh: dict[int, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.power_kw = {d: np.zeros((self.n_sites, self.n_slots)) for d in (UP, DOWN)}
        self.energy_kwh = {d: np.zeros((self.n_sites, self.n_slots)) for d in (UP, DOWN)}

    def copy(self) -> Holdings:
        out = Holdings(self.n_sites, self.n_slots)
        out.power_kw = {d: a.copy() for d, a in self.power_kw.items()}
        out.energy_kwh = {d: a.copy() for d, a in self.energy_kwh.items()}
        return out

    def add(self, site: int, slots: slice, direction: int, kw: float, sustain_h: float, efficiency: float) -> None:
        """Hold ``kw`` at ``site`` over ``slots`` (both directions for BOTH), with the energy to sustain it."""
        for d in (UP, DOWN) if direction == BOTH else (direction,):
            self.power_kw[d][site, slots] += kw
            # up: the battery gives kw * h / eff; down: it stores kw * h * eff
            self.energy_kwh[d][site, slots] += kw * sustain_h / efficiency if d == UP else kw * sustain_h * efficiency


def baseline_paths(
    batteries: Sequence[SiteBattery], net_kw: np.ndarray, slot_h: float
) -> tuple[np.ndarray, np.ndarray]:
    """Self-consumption per sample: battery power (> 0 discharge) per slot and stored energy at each slot
    boundary. ``net_kw``: (sites, slots, samples) load minus PV. Returns (sites, slots, samples) and
    (sites, slots + 1, samples)."""
    n_sites, n_slots, n_samples = net_kw.shape
    eff = np.array([b.efficiency for b in batteries])[:, None]
    e_min = np.array([b.min_energy_kwh for b in batteries])[:, None]
    e_max = np.array([b.max_energy_kwh for b in batteries])[:, None]
    p_dis = np.array([b.max_discharge_kw for b in batteries])[:, None]
    p_ch = np.array([b.max_charge_kw for b in batteries])[:, None]
    energy = np.empty((n_sites, n_slots + 1, n_samples))
    energy[:, 0, :] = np.clip(np.array([b.energy_kwh for b in batteries])[:, None], e_min, e_max)
    power = np.empty((n_sites, n_slots, n_samples))
    for t in range(n_slots):
        e = energy[:, t, :]
        want = net_kw[:, t, :]
        discharge = np.minimum(np.minimum(np.maximum(want, 0.0), p_dis), (e - e_min) * eff / slot_h)
        charge = np.minimum(np.minimum(np.maximum(-want, 0.0), p_ch), (e_max - e) / eff / slot_h)
        p = discharge - charge
        power[:, t, :] = p
        energy[:, t + 1, :] = e - discharge * slot_h / eff + charge * slot_h * eff
    return power, energy


def headroom_kw(
    batteries: Sequence[SiteBattery],
    power: np.ndarray,
    energy: np.ndarray,
    direction: int,
    sustain_slots: int,
    slot_h: float,
    holdings: Holdings,
) -> tuple[np.ndarray, np.ndarray]:
    """Per site, slot and sample: what can be added to the baseline in ``direction`` and held for
    ``sustain_slots`` slots, net of holdings; and the power-only bound (to tell energy-limited offers)."""
    eff = np.array([b.efficiency for b in batteries])[:, None, None]
    held_p = holdings.power_kw[direction][:, :, None]
    held_e = holdings.energy_kwh[direction][:, :, None]
    n_slots = power.shape[1]
    if direction == UP:
        p_max = np.array([b.max_discharge_kw for b in batteries])[:, None, None]
        by_power = p_max - power - held_p
        room = energy - np.array([b.min_energy_kwh for b in batteries])[:, None, None]  # (sites, slots+1, samples)
        per_kwh = eff  # AC kW per stored kWh/h
    else:
        p_max = np.array([b.max_charge_kw for b in batteries])[:, None, None]
        by_power = p_max + power - held_p
        room = np.array([b.max_energy_kwh for b in batteries])[:, None, None] - energy
        per_kwh = 1.0 / eff
    by_energy = np.full(power.shape, np.inf)
    for k in range(1, max(1, sustain_slots) + 1):
        # the offset held from slot t through k slots must fit the room the baseline leaves at t + k
        end = np.minimum(np.arange(n_slots) + k, n_slots)
        free = room[:, end, :] - held_e
        by_energy = np.minimum(by_energy, free * per_kwh / (k * slot_h))
    by_power = np.maximum(by_power, 0.0)
    return np.maximum(np.minimum(by_power, by_energy), 0.0), by_power


def plan_offers(
    batteries: Sequence[SiteBattery],
    net_kw: np.ndarray,
    *,
    slot_start_s: int,
    slot_s: int,
    products: Sequence[ProductSlots],
    confidence: float,
    holdings: Holdings | None = None,
) -> list[OfferLine]:
    """Offers per product, direction and block (see the module docstring). ``net_kw``: (sites, slots,
    samples) load minus PV from joint samples; slot i starts at ``slot_start_s + i * slot_s``.
    ``holdings`` (awards already won) is updated in place with what the offers hold."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    n_sites, n_slots, _ = net_kw.shape
    if n_sites != len(batteries):
        raise ValueError("net_kw has one row per battery")
    held = holdings if holdings is not None else Holdings(n_sites, n_slots)
    awarded = held.copy()  # what awards hold, before this plan's own offers are held
    slot_h = slot_s / 3600.0
    power, energy = baseline_paths(batteries, net_kw, slot_h)
    eff = np.array([b.efficiency for b in batteries])
    order = sorted(range(len(products)), key=lambda i: (-products[i].block_s, i))
    lines: list[OfferLine] = []
    for pi in order:
        product = products[pi]
        sustain_slots = max(1, -(-product.sustain_s // slot_s))
        for start_s in product.block_starts_s:
            first = (start_s - slot_start_s) // slot_s
            last = (start_s + product.block_s - slot_start_s) // slot_s
            if first < 0 or last > n_slots or last <= first:
                continue  # not fully inside the horizon
            slots = slice(first, last)
            directions = (BOTH,) if product.symmetric else product.directions
            for direction in directions:
                per_dir = [
                    headroom_kw(batteries, power, energy, d, sustain_slots, slot_h, held)
                    for d in ((UP, DOWN) if direction == BOTH else (direction,))
                ]
                site_kw = np.min([h[:, slots, :].min(axis=1) for h, _ in per_dir], axis=0)  # (sites, samples)
                power_kw = np.min([p[:, slots, :].min(axis=1) for _, p in per_dir], axis=0)
                total = site_kw.sum(axis=0)
                median_site = np.median(site_kw, axis=1)
                # Never above the sum of the sites' medians, so each site's share stays within its own
                # median headroom: what is held can be delivered by the site that holds it.
                offer_kw = min(
                    float(np.quantile(total, 1.0 - confidence, method="inverted_cdf")), float(median_site.sum())
                )
                by_power = float(np.quantile(power_kw.sum(axis=0), 1.0 - confidence, method="inverted_cdf"))
                split = offer_kw * median_site / median_site.sum() if median_site.sum() > 0 else np.zeros(n_sites)
                reserved = sum(
                    float(awarded.power_kw[d][:, slots].max(axis=1).sum())
                    for d in ((UP, DOWN) if direction == BOTH else (direction,))
                )
                for i in np.flatnonzero(split > 0):
                    held.add(int(i), slots, direction, float(split[i]), product.sustain_s / 3600.0, float(eff[i]))
                lines.append(
                    OfferLine(
                        product_id=product.product_id,
                        direction=direction,
                        block_start_s=start_s,
                        block_end_s=start_s + product.block_s,
                        offer_kw=offer_kw,
                        p50_kw=float(np.median(total)),
                        reserved_kw=reserved,
                        energy_limited=offer_kw < by_power - 1e-9,
                        site_kw={batteries[int(i)].site_id: float(split[i]) for i in np.flatnonzero(split > 0)},
                    )
                )
    lines.sort(key=lambda o: (o.block_start_s, o.product_id, o.direction))
    return lines

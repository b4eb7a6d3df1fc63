"""The dispatch allocator: split one activation step's portfolio offset over the sites, exactly.

Per step, with x_i the offset of site i from its baseline in kW (> 0 = more discharge / less import)::

    minimise  sum_i f_i(x_i),  f_i(x) = alpha_i (x - p_i)^2 + omega_i x^2 + kappa_i (x - prev_i)^2
    subject to  sum_i x_i = clip(T, sum lo, sum hi),   lo_i <= x_i <= hi_i

alpha pulls each site towards its SoC-balancing share p_i (``preferred_offsets``), omega charges wear
and losses (they grow roughly with power squared), kappa charges churn against the offset in force.

The problem is a separable strictly convex QP with one coupling row, so it is solved exactly rather
than iteratively. Stationarity of the Lagrangian gives, for a multiplier lam (the marginal cost of one
more kW of portfolio offset)::

    x_i(lam) = clip((b_i + lam) / (2 a_i), lo_i, hi_i),   a_i = alpha_i + omega_i + kappa_i,
                                                          b_i = 2 alpha_i p_i + 2 kappa_i prev_i

S(lam) = sum_i x_i(lam) is continuous, non-decreasing and piecewise linear, with its kinks at the
breakpoints 2 a_i lo_i - b_i and 2 a_i hi_i - b_i. Sorting the 2n breakpoints and bisecting over them
(each probe one vectorised pass) finds the segment that holds the target; S is linear there, so lam
follows by interpolation, polished by a Newton step on the free sites. O(n log n), no tolerance
tuning, and the optimum is unique (the objective is strictly convex since every a_i > 0).

``solve_with_highs`` solves the same QP with HiGHS; the tests and ``vpp_demo.allocation_bench`` check
the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

HIGHS_ACTIVE_SET_MAX_SITES = 2_000
CHANGED_EPS_KW = 1e-9  # an offset that moved by less than this is "unchanged": no new command
MIN_RANGE_KW = 1.0  # make_problem's normalising range floor: keeps weights of pinned sites finite
_REL_WEIGHT_FLOOR = 1e-300  # a_i / max(a) below this would overflow 1/(2 a_i); such sites are cost-free anyway
_ARRAY_FIELDS = (
    "lo_kw",
    "hi_kw",
    "preferred_kw",
    "previous_kw",
    "balance_weight",
    "wear_weight",
    "churn_weight",
)


@dataclass(frozen=True, eq=False)
class AllocationProblem:
    """One step's allocation problem; arrays are per site (length n), validated and made float64 here.

    ``eq=False``: comparing numpy arrays with ``==`` has no single truth value, so identity it is.
    """

    target_kw: float
    lo_kw: FloatArray
    hi_kw: FloatArray
    preferred_kw: FloatArray
    previous_kw: FloatArray
    balance_weight: FloatArray  # alpha, per kW^2 of distance from preferred_kw
    wear_weight: FloatArray  # omega, per kW^2 of offset
    churn_weight: FloatArray  # kappa, per kW^2 of change from previous_kw
    deadband_kw: float = 0.0

    def __post_init__(self) -> None:
        lo = np.asarray(self.lo_kw, dtype=np.float64)
        if lo.ndim != 1:
            raise ValueError(f"lo_kw must be one-dimensional, got shape {lo.shape}")
        n = lo.shape[0]
        for f in fields(self):
            if f.name not in _ARRAY_FIELDS:
                continue
            arr = np.ascontiguousarray(getattr(self, f.name), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"{f.name} must have shape ({n},) like lo_kw, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{f.name} must be finite")
            object.__setattr__(self, f.name, arr)
        if not math.isfinite(self.target_kw):
            raise ValueError(f"target_kw must be finite, got {self.target_kw}")
        if not (math.isfinite(self.deadband_kw) and self.deadband_kw >= 0):
            raise ValueError(f"deadband_kw must be finite and >= 0, got {self.deadband_kw}")
        object.__setattr__(self, "target_kw", float(self.target_kw))
        object.__setattr__(self, "deadband_kw", float(self.deadband_kw))
        bad = np.flatnonzero(self.lo_kw > self.hi_kw)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"lo_kw must be <= hi_kw: site {i} has lo_kw {self.lo_kw[i]} > hi_kw {self.hi_kw[i]}")
        for name in ("balance_weight", "wear_weight", "churn_weight"):
            bad = np.flatnonzero(getattr(self, name) < 0)
            if bad.size:
                raise ValueError(f"{name} must be >= 0: site {int(bad[0])} has {getattr(self, name)[bad[0]]}")
        bad = np.flatnonzero(self.balance_weight + self.wear_weight + self.churn_weight <= 0)
        if bad.size:
            raise ValueError(
                f"balance_weight + wear_weight + churn_weight must be > 0 at every site (strict convexity): "
                f"site {int(bad[0])} has all three 0"
            )

    @property
    def sites(self) -> int:
        return int(self.lo_kw.shape[0])


@dataclass(frozen=True, eq=False)
class AllocationResult:
    offsets_kw: FloatArray
    shortfall_kw: float  # target_kw - sum(offsets_kw): nonzero only when the target is outside [sum lo, sum hi]
    changed: BoolArray  # sites whose offset moved by more than CHANGED_EPS_KW: they need a new command
    multiplier: float  # lam: marginal cost of one more kW of portfolio offset (see allocate)
    objective: float  # sum_i f_i(offsets_kw[i])


def objective(problem: AllocationProblem, x: npt.ArrayLike) -> float:
    """sum_i f_i(x_i) of the problem at offsets x (kW); the same value ``allocate`` reports."""
    xs = np.asarray(x, dtype=np.float64)
    dp = xs - problem.preferred_kw
    dprev = xs - problem.previous_kw
    return float(
        np.dot(problem.balance_weight * dp, dp)
        + np.dot(problem.wear_weight * xs, xs)
        + np.dot(problem.churn_weight * dprev, dprev)
    )


def preferred_offsets(target_kw: float, energy_up_kwh: npt.ArrayLike, energy_down_kwh: npt.ArrayLike) -> FloatArray:
    """SoC-balancing share of the target: p_i = T * e_i / sum(e), e the energy left in T's direction.

    Why: under this split every site runs out of energy at the same moment, sum(e) / |T|, which is the
    longest any split can hold T (the fleet holds sum(e) kWh at most), since any other split empties
    some site earlier and then leaves the rest to carry its part. Equivalently every site's state of
    charge moves at the same relative rate, so the fleet stays balanced for the next activation.
    Up (T > 0, discharge) uses the energy above each site's floor, down (T < 0, charge) the room below
    its ceiling; negative energies count as none. No energy anywhere, or T == 0, gives zeros.
    """
    up = np.asarray(energy_up_kwh, dtype=np.float64)
    down = np.asarray(energy_down_kwh, dtype=np.float64)
    if up.ndim != 1 or up.shape != down.shape:
        raise ValueError(f"energy_up_kwh and energy_down_kwh must be 1-D of one length, got {up.shape}, {down.shape}")
    if not (np.isfinite(up).all() and np.isfinite(down).all()):
        raise ValueError("energy_up_kwh and energy_down_kwh must be finite")
    if not math.isfinite(target_kw):
        raise ValueError(f"target_kw must be finite, got {target_kw}")
    if target_kw == 0:
        return np.zeros(up.shape[0])
    energy = np.maximum(up if target_kw > 0 else down, 0.0)
    total = float(energy.sum())
    if total <= 0:
        return np.zeros(up.shape[0])
    return np.asarray(target_kw * (energy / total), dtype=np.float64)


def make_problem(
    target_kw: float,
    lo_kw: npt.ArrayLike,
    hi_kw: npt.ArrayLike,
    *,
    energy_up_kwh: npt.ArrayLike,
    energy_down_kwh: npt.ArrayLike,
    previous_kw: npt.ArrayLike | None = None,
    balance_weight: npt.ArrayLike = 1.0,
    wear_weight: npt.ArrayLike = 0.01,
    churn_weight: npt.ArrayLike = 0.05,
    deadband_kw: float = 0.0,
) -> AllocationProblem:
    """Build a problem with preferred offsets from SoC and weights scaled per site.

    The weights given (scalars broadcast, or per site) are per kW of the site's power range
    r_i = max(hi_i - lo_i, MIN_RANGE_KW): each is divided by r_i. Why 1/r and not 1: with equal weights
    a 5 kW home and a 500 kW factory would pay the same for a kW, so the home would be driven to its
    limit while the factory barely moved. With 1/r_i, the wear term alone splits the target in
    proportion to range (every site at the same utilisation x_i / r_i), and a kW away from the
    preferred share costs a home 100 times what it costs the factory, matching what that kW means to
    each (a site's losses scale ~ P^2 / size). All three terms share the same scale, so every site
    makes the same balance/wear/churn trade-off. The objective's unit is then kW (kW^2 / kW).
    The floor keeps pinned sites (lo == hi, range 0) finite; their offset is fixed anyway.
    """
    lo = np.asarray(lo_kw, dtype=np.float64)
    hi = np.asarray(hi_kw, dtype=np.float64)
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ValueError(f"lo_kw and hi_kw must be 1-D of one length, got {lo.shape}, {hi.shape}")
    n = lo.shape[0]
    for name, energy in (("energy_up_kwh", energy_up_kwh), ("energy_down_kwh", energy_down_kwh)):
        if np.shape(energy) != (n,):
            raise ValueError(f"{name} must have shape ({n},) like lo_kw, got {np.shape(energy)}")
    per_kw_of_range = 1.0 / np.maximum(hi - lo, MIN_RANGE_KW)

    def scaled(name: str, w: npt.ArrayLike) -> FloatArray:
        arr = np.asarray(w, dtype=np.float64)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != n):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
        return np.asarray(np.broadcast_to(arr, (n,)) * per_kw_of_range, dtype=np.float64)

    prev = np.zeros(n) if previous_kw is None else np.asarray(previous_kw, dtype=np.float64)
    return AllocationProblem(
        target_kw=float(target_kw),
        lo_kw=lo,
        hi_kw=hi,
        preferred_kw=preferred_offsets(target_kw, energy_up_kwh, energy_down_kwh),
        previous_kw=prev,
        balance_weight=scaled("balance_weight", balance_weight),
        wear_weight=scaled("wear_weight", wear_weight),
        churn_weight=scaled("churn_weight", churn_weight),
        deadband_kw=deadband_kw,
    )


def _quadratic_terms(problem: AllocationProblem) -> tuple[FloatArray, FloatArray, int]:
    """(2a, b, e): f_i(x) = 2^e (a_i x^2 - b_i x) + const, with e chosen so max(a) is in [0.5, 1).

    Scaling every f_i by the same positive constant leaves the minimiser unchanged; a power of two
    keeps it exact and stops 1/(2 a_i) overflowing when all weights are tiny (or 2 a_i lo_i when huge).
    """
    alpha, kappa = problem.balance_weight, problem.churn_weight
    a = alpha + problem.wear_weight + kappa
    if a.size == 0:
        return a, a.copy(), 0
    _, exponent = math.frexp(float(a.max()))
    if abs(exponent) < 1000:  # a power of two: multiplying by it is exact (and faster than ldexp)
        factor = math.ldexp(1.0, -exponent)
        a, alpha, kappa = a * factor, alpha * factor, kappa * factor
    else:  # 2^-exponent itself would overflow: scale element-wise
        a, alpha, kappa = np.ldexp(a, -exponent), np.ldexp(alpha, -exponent), np.ldexp(kappa, -exponent)
    b = 2.0 * (alpha * problem.preferred_kw + kappa * problem.previous_kw)
    a = np.maximum(a, _REL_WEIGHT_FLOOR)
    a *= 2.0
    return a, b, exponent


def _solve_exact(
    lo: FloatArray, hi: FloatArray, two_a: FloatArray, b: FloatArray, target_kw: float
) -> tuple[FloatArray, float, float]:
    """Exact KKT solve of min sum a x^2 - b x s.t. sum x = clip(target), lo <= x <= hi.

    Returns (x, lam, clipped target); lam is on the scale of (two_a, b).
    """
    n = lo.shape[0]
    if n == 0:
        return np.zeros(0), 0.0, 0.0
    sum_lo = float(lo.sum())
    sum_hi = float(hi.sum())
    target = min(max(target_kw, sum_lo), sum_hi)
    if target <= sum_lo or target >= sum_hi:
        # Every site at one bound. Any lam beyond the movable sites' breakpoints fits the KKT conditions;
        # report the boundary one: the cheapest next kW up (at the floors), the dearest last kW (ceilings).
        at_floor = target <= sum_lo
        x = lo.copy() if at_floor else hi.copy()
        movable = lo < hi
        lam = 0.0  # all sites pinned: every lam fits
        if movable.any():
            edge = (two_a * x - b)[movable]
            lam = float(edge.min() if at_floor else edge.max())
        return x, lam, target

    inv = 1.0 / two_a
    breaks = np.concatenate((two_a * lo - b, two_a * hi - b))
    breaks.sort()
    buf = np.empty(n)

    def supply(lam: float) -> float:
        """S(lam) = sum_i clip((b_i + lam) / (2 a_i), lo_i, hi_i), one vectorised pass, no allocation."""
        np.add(b, lam, out=buf)
        np.multiply(buf, inv, out=buf)
        np.maximum(buf, lo, out=buf)
        np.minimum(buf, hi, out=buf)
        return float(buf.sum())

    # Bisect over the sorted breakpoints for left < right with S(left) < target <= S(right). The float
    # S is monotone too (rounding is monotone and the summation order fixed), so this is well defined.
    left, right = 0, breaks.shape[0] - 1
    s_left, s_right = supply(float(breaks[left])), supply(float(breaks[right]))
    if s_left >= target:
        right, s_right = left, s_left
    elif s_right < target:
        left, s_left = right, s_right
    while right - left > 1:
        mid = (left + right) // 2
        s_mid = supply(float(breaks[mid]))
        if s_mid < target:
            left, s_left = mid, s_mid
        else:
            right, s_right = mid, s_mid
    t_left, t_right = float(breaks[left]), float(breaks[right])
    # No breakpoint lies strictly inside (t_left, t_right): S is linear there.
    if s_right > s_left:
        lam = t_left + (target - s_left) * ((t_right - t_left) / (s_right - s_left))
        lam = min(max(lam, t_left), t_right)
    else:
        lam = t_right
    x = np.clip((b + lam) * inv, lo, hi)
    # Newton polish: interpolation leaves a rounding-level residual; move lam on the free sites.
    for _ in range(3):
        residual = target - float(x.sum())
        if residual == 0.0:
            break
        free = (x > lo) & (x < hi)
        slope = float(inv[free].sum())
        if slope <= 0.0:
            break
        lam_new = lam + residual / slope
        x_new = np.clip((b + lam_new) * inv, lo, hi)
        if abs(target - float(x_new.sum())) >= abs(residual):
            break
        lam, x = lam_new, x_new
    return x, lam, target


def allocate(problem: AllocationProblem) -> AllocationResult:
    """The optimal offsets for one step (exact for deadband_kw == 0), then the deadband post-step.

    ``multiplier`` is lam in the problem's own units (cost per kW): f_i'(x_i) = lam at every site strictly
    inside its bounds. When the target is outside the fleet's range every site sits at one bound and
    lam is the marginal cost at that bound (cheapest next kW up, dearest last kW down).

    Deadband (``deadband_kw`` > 0) is a heuristic post-step, not part of the exactness claim: sites
    whose optimal offset is within the deadband of the offset in force (and whose previous offset is
    still within bounds) keep it, and the other sites are re-solved exactly for the rest of the target;
    repeated until no further site falls inside the deadband. If the kept offsets leave a rest that the
    other sites cannot reach, the exact solution is returned unchanged. ``multiplier`` is then that of
    the last re-solve.
    """
    n = problem.sites
    lo, hi, prev = problem.lo_kw, problem.hi_kw, problem.previous_kw
    two_a, b, exponent = _quadratic_terms(problem)
    x, lam, target = _solve_exact(lo, hi, two_a, b, problem.target_kw)
    if problem.deadband_kw > 0 and n:
        x, lam = _apply_deadband(problem, two_a, b, target, x, lam)
    return AllocationResult(
        offsets_kw=x,
        shortfall_kw=problem.target_kw - target,
        changed=np.abs(x - prev) > CHANGED_EPS_KW,
        multiplier=math.ldexp(lam, exponent),  # lam of the rescaled problem, back in cost per kW
        objective=objective(problem, x),
    )


def _apply_deadband(
    problem: AllocationProblem, two_a: FloatArray, b: FloatArray, target: float, x_exact: FloatArray, lam_exact: float
) -> tuple[FloatArray, float]:
    """Keep offsets that would move by less than the deadband; re-solve the rest (see ``allocate``)."""
    lo, hi, prev = problem.lo_kw, problem.hi_kw, problem.previous_kw
    holdable = (prev >= lo) & (prev <= hi)
    tol_kw = 1e-9 * max(1.0, abs(target))
    pinned = np.zeros(problem.sites, dtype=bool)
    x, lam = x_exact, lam_exact
    while True:  # the pinned set grows every pass, so this ends within n passes (in practice 1-3)
        new = ~pinned & holdable & (np.abs(x - prev) < problem.deadband_kw)
        if not new.any():
            return x, lam
        pinned |= new
        free = ~pinned
        rest_kw = target - float(prev[pinned].sum())
        lo_f, hi_f = lo[free], hi[free]
        if rest_kw < float(lo_f.sum()) - tol_kw or rest_kw > float(hi_f.sum()) + tol_kw:
            return x_exact, lam_exact  # keeping these offsets would miss the target: no deadband
        x_free, lam_free, _ = _solve_exact(lo_f, hi_f, two_a[free], b[free], rest_kw)
        x = prev.copy()
        x[free] = x_free
        if x_free.size:
            lam = lam_free


# Rescalings solve_with_highs tries in turn: x = y / s with s a power of two (exact), objective times s^2
# so the Hessian is unchanged. HiGHS 1.16's active-set QP solver reports "Solve error" on instances with
# sub-watt magnitudes (a target or bound distance of 1e-7..1e-3 kW: its internal tolerances are absolute,
# cf. ERGO-Code/HiGHS#2973); in kW * 2^10 (about watts) the same instances solve.
_HIGHS_SCALES = (1.0, 2.0**10, 2.0**20)


def solve_with_highs(
    problem: AllocationProblem, *, solver: str = "auto", time_limit_s: float | None = None
) -> tuple[FloatArray, float]:
    """The same convex QP (deadband ignored) solved by HiGHS: (offsets_kw, objective at them).

    The reference the exact solver is checked against. HiGHS minimises 1/2 x'Qx + c'x, so Q is
    diag(2 a_i), c = -b_i, one row sum x = clipped target, column bounds lo/hi; the objective is
    recomputed with ``objective`` at HiGHS's x (constant terms included). A solve that HiGHS does not
    finish as optimal is retried in rescaled units (see _HIGHS_SCALES).

    solver: "auto" uses HiGHS's active-set QP solver up to HIGHS_ACTIVE_SET_MAX_SITES and its
    interior-point QP solver HiPO above (highspy-extras; near-linear in n; it fails on some small
    degenerate instances the active set solves), or the active set where HiPO is not installed, whose cost grows
    roughly with n^3 (about 1 s at 1,000 sites and 10 s at 2,000 on a 2-core machine; at 10,000 it
    failed after 5 minutes with the default options). Any other value goes to HiGHS's "solver" option.
    Raises RuntimeError with HiGHS's model status unless a solve ends optimal.
    """
    import highspy  # deferred: only the reference check needs it

    n = problem.sites
    if n == 0:
        return np.zeros(0), 0.0
    a = problem.balance_weight + problem.wear_weight + problem.churn_weight
    b = 2.0 * (problem.balance_weight * problem.preferred_kw + problem.churn_weight * problem.previous_kw)
    target = min(max(problem.target_kw, float(problem.lo_kw.sum())), float(problem.hi_kw.sum()))

    statuses: list[str] = []
    for scale in _HIGHS_SCALES:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        if solver == "auto":
            # Active set (exact on its vertex, robust on degenerate instances) where it is fast enough;
            # HiPO above that.
            if n <= HIGHS_ACTIVE_SET_MAX_SITES or h.setOptionValue("solver", "hipo") != highspy.HighsStatus.kOk:
                h.setOptionValue("solver", "choose")
        elif h.setOptionValue("solver", solver) != highspy.HighsStatus.kOk:
            raise RuntimeError(f"HiGHS rejected solver={solver!r}")
        h.setOptionValue("qp_nullspace_limit", max(4000, n))  # the default 4000 fails larger active-set solves
        if time_limit_s is not None:
            h.setOptionValue("time_limit", float(time_limit_s))

        lp = highspy.HighsLp()
        lp.num_col_ = n
        lp.num_row_ = 1
        lp.col_cost_ = -b * scale
        lp.col_lower_ = problem.lo_kw * scale
        lp.col_upper_ = problem.hi_kw * scale
        lp.row_lower_ = np.array([target * scale])
        lp.row_upper_ = np.array([target * scale])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = n
        lp.a_matrix_.num_row_ = 1
        lp.a_matrix_.start_ = np.array([0, n], dtype=np.int32)
        lp.a_matrix_.index_ = np.arange(n, dtype=np.int32)
        lp.a_matrix_.value_ = np.ones(n)
        hessian = highspy.HighsHessian()
        hessian.dim_ = n
        hessian.format_ = highspy.HessianFormat.kTriangular
        hessian.start_ = np.arange(n + 1, dtype=np.int32)
        hessian.index_ = np.arange(n, dtype=np.int32)
        hessian.value_ = 2.0 * a
        model = highspy.HighsModel()
        model.lp_ = lp
        model.hessian_ = hessian
        if h.passModel(model) == highspy.HighsStatus.kError:
            raise RuntimeError("HiGHS rejected the allocation QP")
        h.run()
        model_status = h.getModelStatus()
        if model_status == highspy.HighsModelStatus.kOptimal:
            x = np.asarray(h.getSolution().col_value, dtype=np.float64) / scale
            return x, objective(problem, x)
        statuses.append(f"{h.modelStatusToString(model_status)} (x scale {scale:g})")
        if model_status == highspy.HighsModelStatus.kTimeLimit:
            break
    raise RuntimeError(f"HiGHS did not solve the allocation QP: {', '.join(statuses)}")

"""Command line: rolling-origin backtests on real data, reports in ``out/backtest/``.

Examples::

    python -m forecasting.backtest.cli                  # full default run
    python -m forecasting.backtest.cli --quick          # reduced (minutes)
    python -m forecasting.backtest.cli --tasks load --load-train-end 2008-07-01 \\
        --load-test-start 2008-07-01 --load-test-end 2009-07-01

Defaults: load train < 2009-01-01, test 2009; PV train < 2013-01-01, test
2013 (capacity estimated from the first data year 2011-04..2012-04 only).
Models are refit every month on all data before the month's first issue
(``--retrain none`` fits once on data before the train end).  Deterministic:
fixed seeds, LightGBM ``deterministic=True``.  Progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from forecasting.backtest.report import write_report
from forecasting.backtest.runner import ModelConfig, TaskResult, run_load, run_pv
from forecasting.data.cache import REPO_ROOT
from forecasting.data.pvdaq import load_pvdaq_system50, load_pvdaq_system50_info
from forecasting.data.uci import load_uci_household


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forecasting.backtest.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "backtest")
    p.add_argument("--tasks", nargs="+", default=["load", "pv_day_ahead", "pv_intraday"],
                   choices=["load", "pv_day_ahead", "pv_intraday"])
    p.add_argument("--load-file", type=Path, default=None, help="UCI household CSV")
    p.add_argument("--pv-file", type=Path, default=None, help="PVDAQ system-50 parquet")
    p.add_argument("--load-train-end", type=_ts, default=_ts("2009-01-01"))
    p.add_argument("--load-test-start", type=_ts, default=_ts("2009-01-01"))
    p.add_argument("--load-test-end", type=_ts, default=_ts("2010-01-01"))
    p.add_argument("--pv-train-end", type=_ts, default=_ts("2013-01-01"))
    p.add_argument("--pv-test-start", type=_ts, default=_ts("2013-01-01"))
    p.add_argument("--pv-test-end", type=_ts, default=_ts("2014-01-01"))
    p.add_argument("--retrain", choices=["monthly", "none"], default="monthly")
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 6 test weeks per data set, smaller models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="LightGBM threads (1-2)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--no-forecasts", action="store_true", help="skip forecasts_*.csv.gz")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    cfg = ModelConfig(num_threads=args.threads, seed=args.seed)
    if args.quick:
        cfg.n_estimators_load, cfg.n_estimators_pv = 120, 100
        for name in ("load", "pv"):
            start = getattr(args, f"{name}_test_start")
            end = min(getattr(args, f"{name}_test_end"), start + pd.Timedelta(weeks=6))
            setattr(args, f"{name}_test_end", end)
    config = {k: str(v) for k, v in vars(args).items()}
    results: list[TaskResult] = []
    if "load" in args.tasks:
        print("[load] reading UCI household data", file=sys.stderr, flush=True)
        load = load_uci_household(args.load_file)
        results += run_load(load, args.load_train_end, args.load_test_start,
                            args.load_test_end, cfg, args.retrain)
    pv_tasks = [t for t in args.tasks if t.startswith("pv")]
    if pv_tasks:
        print("[pv] reading PVDAQ system 50", file=sys.stderr, flush=True)
        pv, site = load_pvdaq_system50(args.pv_file)
        info = load_pvdaq_system50_info(args.pv_file)
        config["pv_site"] = site.model_dump_json()
        config["pv_clock_fix"] = str(info)
        results += run_pv(pv, site, args.pv_train_end, args.pv_test_start, args.pv_test_end,
                          cfg, args.retrain, pv_tasks)
    config["weather_forecasts"] = "none (no archive of real forecasts offline)"
    config["wall_time_s"] = f"{time.perf_counter() - t_start:.0f}"
    doc = write_report(results, args.out, config, n_boot=args.bootstrap, seed=args.seed,
                       save_forecasts=not args.no_forecasts)
    wall = time.perf_counter() - t_start
    print(f"[done] wrote {args.out} in {wall:.0f}s", file=sys.stderr)
    for t in doc["targets"]:
        mark = "ok " if t["met"] else "MISS"
        print(f"  {mark} {t['target']}: {t['value']:.3f} {t['detail']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

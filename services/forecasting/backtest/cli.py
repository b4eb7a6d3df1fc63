"""Command line: rolling-origin backtests on real data, reports in ``out/backtest/``.

Examples::

    python -m forecasting.backtest.cli                  # both named splits (default, early)
    python -m forecasting.backtest.cli --splits default # one split
    python -m forecasting.backtest.cli --quick          # reduced (minutes)
    python -m forecasting.backtest.cli --tasks load --load-train-end 2008-07-01 \\
        --load-test-start 2008-07-01 --load-test-end 2009-07-01   # a custom split

Named splits (train = all data before the train end, capped by the model's
training window; test = [start, end)):

* ``default`` -- load: train < 2009-01-01, test 2009; PV: train < 2013-01-01,
  test 2013.
* ``early`` -- load: train < 2008-01-01 (13 months of data), test 2008; PV:
  train < 2012-01-01 (8.5 months of data), test 2012.

Giving any of the ``--load-*``/``--pv-*`` date options runs one split named
``custom`` (unset dates from ``default``) unless ``--splits`` is also given.
The PV capacity of a split is estimated from the 365 days before its first fit.
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

from forecasting.backtest.report import SplitRun, write_report
from forecasting.backtest.runner import TaskResult, run_load, run_pv
from forecasting.data.cache import REPO_ROOT
from forecasting.data.pvdaq import load_pvdaq_system50, load_pvdaq_system50_info
from forecasting.data.uci import load_uci_household
from forecasting.models.spec import ModelSpec

DATES = ("load_train_end", "load_test_start", "load_test_end",
         "pv_train_end", "pv_test_start", "pv_test_end")
SPLITS: dict[str, dict[str, str]] = {
    "default": {
        "load_train_end": "2009-01-01", "load_test_start": "2009-01-01",
        "load_test_end": "2010-01-01",
        "pv_train_end": "2013-01-01", "pv_test_start": "2013-01-01",
        "pv_test_end": "2014-01-01",
    },
    "early": {
        "load_train_end": "2008-01-01", "load_test_start": "2008-01-01",
        "load_test_end": "2009-01-01",
        "pv_train_end": "2012-01-01", "pv_test_start": "2012-01-01",
        "pv_test_end": "2013-01-01",
    },
}


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forecasting.backtest.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "backtest")
    p.add_argument("--tasks", nargs="+", default=["load", "pv_day_ahead", "pv_intraday"],
                   choices=["load", "pv_day_ahead", "pv_intraday"])
    p.add_argument("--splits", nargs="+", default=None, choices=[*SPLITS, "custom"],
                   help="named splits to run (default: default early)")
    p.add_argument("--load-file", type=Path, default=None, help="UCI household CSV")
    p.add_argument("--pv-file", type=Path, default=None, help="PVDAQ system-50 parquet")
    for name in DATES:
        p.add_argument("--" + name.replace("_", "-"), type=_ts, default=None,
                       help=f"custom split (default split: {SPLITS['default'][name]})")
    p.add_argument("--retrain", choices=["monthly", "none"], default="monthly")
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 6 test weeks per data set, smaller models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="LightGBM threads (1-2)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--no-forecasts", action="store_true", help="skip forecasts_*.csv.gz")
    return p


def split_dates(args: argparse.Namespace) -> dict[str, dict[str, pd.Timestamp]]:
    """The splits to run: name -> the six dates (``--quick`` cuts tests to 6 weeks)."""
    custom = {k: getattr(args, k) for k in DATES if getattr(args, k) is not None}
    names = args.splits or (["custom"] if custom else ["default", "early"])
    out = {}
    for name in names:
        base = SPLITS["default" if name == "custom" else name]
        dates = {k: _ts(v) for k, v in base.items()}
        if name == "custom":
            dates.update(custom)
        if args.quick:
            for kind in ("load", "pv"):
                start = dates[f"{kind}_test_start"]
                end = min(dates[f"{kind}_test_end"], start + pd.Timedelta(weeks=6))
                dates[f"{kind}_test_end"] = end
        out[name] = dates
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    cfg = ModelSpec(num_threads=args.threads, seed=args.seed)
    if args.quick:
        cfg = cfg.model_copy(update={"load_n_estimators": 120, "pv_n_estimators": 100})
    splits = split_dates(args)
    config: dict[str, str] = {
        k: str(v) for k, v in vars(args).items() if k not in DATES and k != "splits"
    }
    config["splits"] = " ".join(splits)
    config["model_spec"] = cfg.model_dump_json()
    config["model_fingerprint"] = cfg.fingerprint()
    load = None
    if "load" in args.tasks:
        print("[load] reading UCI household data", file=sys.stderr, flush=True)
        load = load_uci_household(args.load_file)
    pv_tasks = [t for t in args.tasks if t.startswith("pv")]
    pv = None
    if pv_tasks:
        print("[pv] reading PVDAQ system 50", file=sys.stderr, flush=True)
        pv, site = load_pvdaq_system50(args.pv_file)
        info = load_pvdaq_system50_info(args.pv_file)
        config["pv_site"] = site.model_copy(update={"kwp": 1.0}).model_dump_json() + \
            " (kwp per split, estimated before its first fit)"
        config["pv_clock_fix"] = str({k: v for k, v in info.items() if k != "kwp_estimate"})
    config["weather_forecasts"] = "none (no archive of real forecasts offline)"
    runs = []
    for name, d in splits.items():
        ts = time.perf_counter()
        results: list[TaskResult] = []
        if load is not None:
            print(f"[{name}] load", file=sys.stderr, flush=True)
            results += run_load(load, d["load_train_end"], d["load_test_start"],
                                d["load_test_end"], cfg, args.retrain)
        if pv is not None:
            print(f"[{name}] pv", file=sys.stderr, flush=True)
            results += run_pv(pv, site, d["pv_train_end"], d["pv_test_start"], d["pv_test_end"],
                              cfg, args.retrain, pv_tasks, capacity_from_data=True)
        split_cfg = {k: str(v) for k, v in d.items()
                     if (k.startswith("load") and load is not None)
                     or (k.startswith("pv") and pv is not None)}
        split_cfg["wall_time_s"] = f"{time.perf_counter() - ts:.0f}"
        runs.append(SplitRun(name, results, split_cfg))
    config["wall_time_s"] = f"{time.perf_counter() - t_start:.0f}"
    pv_point = "median (P50)" if cfg.pv_point == "median" else "predictive mean"
    points = f"the median (P50) for the load model and the {pv_point} for the PV model"
    doc = write_report(runs, args.out, config, n_boot=args.bootstrap, seed=args.seed,
                       save_forecasts=not args.no_forecasts, candidate_points=points)
    wall = time.perf_counter() - t_start
    print(f"[done] wrote {args.out} in {wall:.0f}s", file=sys.stderr)
    for name, part in doc["splits"].items():
        print(f"  split {name}: {part['targets_met']}/{part['targets_total']} targets met",
              file=sys.stderr)
        for t in part["targets"]:
            mark = "ok " if t["met"] else "MISS"
            print(f"    {mark} {t['target']}: {t['value']:.3f} {t['detail']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make load``: Locust, headless, against the gRPC APIs of a freshly started stack; prints the stats.

Bounded in users and time, loopback only. Results also go to ``out/load/`` (Locust's CSV files).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from vpp.v1 import bidding_pb2, bidding_pb2_grpc, common_pb2, forecasting_pb2, forecasting_pb2_grpc

from vpp_demo.stack import Stack, retry_warming
from vpp_devtools.process import exit_on_sigterm


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--run-time", default="30s")
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    locustfile = Path(__file__).resolve().parents[2] / "tests" / "load" / "locustfile.py"
    with Stack(args.out / "run") as stack:
        env = dict(os.environ)
        env.update(
            {
                "VPP_LOAD_AGGREGATION": stack.target("aggregation"),
                "VPP_LOAD_DISPATCH": stack.target("dispatch"),
                "VPP_LOAD_BIDDING": stack.target("bidding"),
                "VPP_LOAD_GATEWAY": stack.target("gateway"),
                "VPP_LOAD_SITE_IDS": ",".join(s.site_id for s in stack.sites),
            }
        )
        print("warming up: bidding needs live site state and forecasts", file=sys.stderr)
        bidding = bidding_pb2_grpc.BiddingServiceStub(stack.channel("bidding"))
        retry_warming(lambda: bidding.BuildBids(bidding_pb2.BuildBidsRequest(portfolio_id="eu-north"), timeout=30), 60)
        if "forecasting" in stack.ports:
            env["VPP_LOAD_FORECASTING"] = stack.target("forecasting")
            forecasting = forecasting_pb2_grpc.ForecastingServiceStub(stack.channel("forecasting"))
            request = forecasting_pb2.GetForecastRequest(stream=common_pb2.FORECAST_STREAM_PV, horizon_minutes=1440)
            retry_warming(lambda: forecasting.GetForecast(request, timeout=120), 180)
        print(f"running Locust: {args.users} users for {args.run_time} ...", file=sys.stderr, flush=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile),
                "--headless",
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                args.run_time,
                "--only-summary",
                "--csv",
                str(args.out / "locust"),
                "--exit-code-on-error",
                "1",
            ],
            env=env,
            check=False,
        )
    print(f"\nLocust CSV stats in {args.out}/locust_stats.csv", flush=True)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()

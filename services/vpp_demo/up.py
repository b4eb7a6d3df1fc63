"""``make up``: the demo stack, kept running until Ctrl-C, with every address printed for exploring
it with other tools (librdkafka clients, mbpoll, grpcurl-style reflection clients, Prometheus)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from vpp_demo.stack import DEMO_SECRET, Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("out/up"))
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Stack(args.workdir) as stack:
        print("\nThe platform is running. Ctrl-C stops every process.\n")
        print(f"Kafka bootstrap (Tansu):  {stack.bootstrap_servers}")
        print("gRPC services (health + reflection on each):")
        for name in stack.ports:
            print(f"  {name:<12} {stack.target(name)}")
        print("Prometheus /metrics:")
        for name, url in stack.metrics_urls().items():
            print(f"  {name:<24} {url}")
        print("Modbus TCP device simulators (SunSpec, 'SunS' at register 40000, unit 1):")
        for site, ports in stack.site_ports.items():
            print(
                f"  {site:<12} 127.0.0.1:{ports.modbus}   e.g. mbpoll -m tcp -a 1 -0 -r 40000 -c 2 -t 4:hex -1 "
                f"-p {ports.modbus} 127.0.0.1"
            )
        print(f"Gateway site-token secret (demo only): {DEMO_SECRET}")
        print(f"Logs: {args.workdir / 'logs'}\n", flush=True)
        stop.wait()
        print("stopping ...", flush=True)


if __name__ == "__main__":
    main()

"""``python -m aggregation``: settings from VPP_* environment variables (and KAFKA_BOOTSTRAP_SERVERS)."""

from aggregation.service import build
from aggregation.settings import AggregationSettings
from vpp_common.app import run_service


def main() -> None:
    run_service(AggregationSettings, build)


if __name__ == "__main__":
    main()

"""``python -m market``: settings from VPP_* environment variables (and KAFKA_BOOTSTRAP_SERVERS)."""

from market.service import build
from market.settings import MarketSettings
from vpp_common.app import run_service


def main() -> None:
    run_service(MarketSettings, build)


if __name__ == "__main__":
    main()

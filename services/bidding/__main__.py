"""``python -m bidding``: settings from VPP_* environment variables (and KAFKA_BOOTSTRAP_SERVERS)."""

from bidding.service import build
from bidding.settings import BiddingSettings
from vpp_common.app import run_service


def main() -> None:
    run_service(BiddingSettings, build)


if __name__ == "__main__":
    main()

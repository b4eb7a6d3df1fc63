"""``python -m dispatch``: settings from VPP_* environment variables (and KAFKA_BOOTSTRAP_SERVERS)."""

from dispatch.service import build
from dispatch.settings import DispatchSettings
from vpp_common.app import run_service


def main() -> None:
    run_service(DispatchSettings, build)


if __name__ == "__main__":
    main()

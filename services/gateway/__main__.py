"""``python -m gateway``: settings from VPP_* environment variables (and KAFKA_BOOTSTRAP_SERVERS)."""

from gateway.service import build
from gateway.settings import GatewaySettings
from vpp_common.app import run_service


def main() -> None:
    run_service(GatewaySettings, build)


if __name__ == "__main__":
    main()

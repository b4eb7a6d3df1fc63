import asyncio

from vpp_common.app import ServiceApp

from gateway.service import build
from gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

import asyncio

from gateway.service import build
from gateway.settings import GatewaySettings
from vpp_common.app import ServiceApp


def main() -> None:
    settings = GatewaySettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

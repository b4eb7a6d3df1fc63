import asyncio

from market.service import build
from market.settings import MarketSettings
from vpp_common.app import ServiceApp


def main() -> None:
    settings = MarketSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

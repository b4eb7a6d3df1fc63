import asyncio

from vpp_common.app import ServiceApp

from market.service import build
from market.settings import MarketSettings


def main() -> None:
    settings = MarketSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

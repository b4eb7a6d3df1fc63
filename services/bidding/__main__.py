import asyncio

from bidding.service import build
from bidding.settings import BiddingSettings
from vpp_common.app import ServiceApp


def main() -> None:
    settings = BiddingSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

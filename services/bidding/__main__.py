import asyncio

from vpp_common.app import ServiceApp

from bidding.service import build
from bidding.settings import BiddingSettings


def main() -> None:
    settings = BiddingSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

import asyncio

from aggregation.service import build
from aggregation.settings import AggregationSettings
from vpp_common.app import ServiceApp


def main() -> None:
    settings = AggregationSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

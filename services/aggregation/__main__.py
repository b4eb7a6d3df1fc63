import asyncio

from vpp_common.app import ServiceApp

from aggregation.service import build
from aggregation.settings import AggregationSettings


def main() -> None:
    settings = AggregationSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

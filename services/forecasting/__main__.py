"""``python -m forecasting``: the forecasting service (settings from VPP_* environment variables)."""

import asyncio

from vpp_common.app import ServiceApp

from forecasting.service import build
from forecasting.settings import ForecastingSettings


def main() -> None:
    settings = ForecastingSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

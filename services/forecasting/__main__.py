"""``python -m forecasting``: the forecasting service (settings from VPP_* environment variables)."""

import asyncio
import sys

from forecasting.service import build
from forecasting.settings import ForecastingSettings
from forecasting.sites import SitesFileError, load_sites
from forecasting.store import StoreUnavailable
from vpp_common.app import ServiceApp, load_settings


def main() -> None:
    settings = load_settings(ForecastingSettings)
    try:
        sites = load_sites(settings.sites_file)  # before Kafka: a bad file should fail fast and say why
        app = ServiceApp(settings)
        build(app, settings, sites=sites)
    except (SitesFileError, StoreUnavailable) as exc:  # configuration errors: one clear line, no traceback
        raise SystemExit(f"forecasting: {exc}") from exc
    sys.exit(asyncio.run(app.run()))


if __name__ == "__main__":
    main()

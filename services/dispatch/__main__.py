import asyncio

from dispatch.service import build
from dispatch.settings import DispatchSettings
from vpp_common.app import ServiceApp


def main() -> None:
    settings = DispatchSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

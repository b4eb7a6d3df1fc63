import asyncio

from vpp_common.app import ServiceApp

from dispatch.service import build
from dispatch.settings import DispatchSettings


def main() -> None:
    settings = DispatchSettings()
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()

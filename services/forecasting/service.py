"""Wire forecasting into ``ServiceApp``: the history store, the model thread, the telemetry consumer
(group ``forecasting-history``: replicas split the partitions, so each sample is counted by exactly
one of them), the refresh schedule and the gRPC API.

Threads, each with one owner and no shared state under locks: the event loop (Kafka handling, gRPC,
the schedule), the model thread (every fit and prediction, see ``forecasting.core.ModelThread``) and
the store-writer thread (every history write: telemetry, pruning, the demo seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vpp.v1 import forecasting_pb2_grpc

from forecasting.core import ForecastingCore, ModelThread
from forecasting.ingest import TelemetryIngest
from forecasting.scheduler import Scheduler
from forecasting.selection import CandidateFactory, default_candidates
from forecasting.servicer import SERVICE_NAME, ForecastingServicer
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig, load_sites
from forecasting.store import HistoryStore
from vpp_common.app import ServiceApp
from vpp_common.kafka import EventConsumer
from vpp_common.logs import get_logger
from vpp_common.topics import TELEMETRY

log = get_logger(__name__)


@dataclass
class Built:
    """What ``build`` wired up, for tests and the CLI."""

    core: ForecastingCore
    models: ModelThread
    ingest: TelemetryIngest
    scheduler: Scheduler
    servicer: ForecastingServicer
    store: HistoryStore
    consumer: EventConsumer


def build(
    app: ServiceApp,
    settings: ForecastingSettings,
    *,
    sites: Sequence[SiteConfig] | None = None,
    candidates: CandidateFactory = default_candidates,
) -> Built:
    """Open the store, load the sites (unless given), register the servicer, the telemetry consumer and
    the scheduler. Raises ``SitesFileError`` / ``StoreUnavailable`` on bad configuration."""
    sites = load_sites(settings.sites_file) if sites is None else sites
    store = HistoryStore(settings.store_url)
    store.create_schema()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-store")
    core = ForecastingCore(settings, store, sites, candidates=candidates)
    models = ModelThread(core)
    ingest = TelemetryIngest(settings, store, core.sites, writer, clock=core.clock)
    scheduler = Scheduler(settings, models, store, writer, app.producer)
    servicer = ForecastingServicer(models)
    app.add_servicer(forecasting_pb2_grpc.add_ForecastingServiceServicer_to_server, servicer, SERVICE_NAME)
    consumer = app.add_consumer(
        [TELEMETRY], ingest.on_telemetry_batch, name="telemetry", group="forecasting-history"
    )
    app.add_task(scheduler.run, name="forecast-schedule")

    async def release() -> None:
        models.close()
        writer.shutdown(wait=False, cancel_futures=True)

    app.on_stop(release)
    log.info("forecasting_built", sites=len(sites), store=store.engine.url.render_as_string(hide_password=True))
    return Built(core, models, ingest, scheduler, servicer, store, consumer)

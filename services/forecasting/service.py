"""Wire forecasting into ``ServiceApp``: the history store, the model thread, the trainer, the forecast
cache, the telemetry consumer (group ``forecasting-history``: replicas split the partitions, so each
sample is counted by exactly one of them), the issue-cycle schedule and the gRPC API.

Threads and processes, each with one owner and no shared state under locks: the event loop (Kafka
handling, gRPC answered from the forecast cache, the schedule, the trainer's bookkeeping), the model
thread (every ``update`` and prediction, see ``forecasting.core.ModelWorker``), the training worker
process(es) (every fit, niced; ``forecasting.training``) with a reader thread for their history, and the
store-writer thread (every history write: telemetry, pruning, the demo seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vpp.v1 import forecasting_pb2_grpc

from forecasting.backtest_scores import load_scores
from forecasting.core import ForecastingCore
from forecasting.forecast_cache import ForecastCache
from forecasting.ingest import TelemetryIngest
from forecasting.model_worker import ModelWorker
from forecasting.scheduler import Scheduler
from forecasting.selection import CandidateFactory, default_candidates
from forecasting.servicer import SERVICE_NAME, ForecastingServicer
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig, load_sites
from forecasting.store import HistoryStore
from forecasting.training import Trainer
from vpp_common.app import ServiceApp
from vpp_common.kafka import EventConsumer
from vpp_common.logs import get_logger
from vpp_common.topics import TELEMETRY

log = get_logger(__name__)


@dataclass
class Built:
    """What ``build`` wired up, for tests and the CLI."""

    core: ForecastingCore
    models: ModelWorker
    ingest: TelemetryIngest
    scheduler: Scheduler
    trainer: Trainer
    cache: ForecastCache
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
    models = ModelWorker(core)
    cache = ForecastCache()
    ingest = TelemetryIngest(settings, store, core.sites, writer, clock=core.clock)
    scheduler = Scheduler(settings, models, store, writer, app.producer, cache)
    trainer = Trainer(settings, models, cache.put, candidates=candidates, on_round_done=scheduler.request_refresh)
    servicer = ForecastingServicer(models, cache, load_scores(settings.backtest_scores_file))
    app.add_servicer(forecasting_pb2_grpc.add_ForecastingServiceServicer_to_server, servicer, SERVICE_NAME)
    consumer = app.add_consumer(
        [TELEMETRY], ingest.on_telemetry_batch, name="telemetry", group="forecasting-history"
    )
    app.add_task(scheduler.run, name="forecast-schedule")

    async def train() -> None:
        await scheduler.seeded.wait()
        await trainer.run()

    app.add_task(train, name="forecast-training")

    async def release() -> None:
        trainer.close()
        models.close()
        writer.shutdown(wait=False, cancel_futures=True)

    app.on_stop(release)
    log.info(
        "forecasting_built",
        sites=len(sites),
        store=store.engine.url.render_as_string(hide_password=True),
        model_fingerprint=settings.model.fingerprint(),
        training_processes=settings.training_processes,
    )
    return Built(core, models, ingest, scheduler, trainer, cache, servicer, store, consumer)

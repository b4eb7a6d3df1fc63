"""The forecasts of the latest issue cycle, kept for requests: ``GetForecast`` and portfolio queries
answer from here, never from a model or the store.

Owned by the event loop: the model thread hands over immutable ``CachedForecast`` values (each site's as
soon as it is computed, the portfolio's at the end of the cycle, a site's again when its new model is
installed) and the loop swaps them in; readers on the loop see whole entries only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from forecasting import metrics as m
from forecasting.core import DEFAULT_QUANTILES, CachedForecast
from forecasting.mapping import NET


class ForecastCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], CachedForecast] = {}
        self._fallback: set[tuple[str, int]] = set()  # site streams (PV, LOAD) a fallback serves
        self._sites: set[str] = set()

    def put(self, entries: Iterable[CachedForecast]) -> None:
        for entry in entries:
            key = (entry.site_id, entry.stream)
            current = self._entries.get(key)
            if current is None or entry.issued_at >= current.issued_at:  # never replace newer by older
                self._entries[key] = entry
                if entry.site_id:
                    self._sites.add(entry.site_id)
                if entry.site_id and entry.stream != NET:
                    (self._fallback.add if entry.fallback_reason else self._fallback.discard)(key)
        m.CACHED_SITES.set(len(self._sites))
        m.FALLBACK_STREAMS.set(len(self._fallback))

    def get(self, site_id: str, stream: int) -> CachedForecast | None:
        return self._entries.get((site_id, stream))

    @staticmethod
    def points(entry: CachedForecast, quantiles: Sequence[float]) -> Sequence[bytes] | None:
        """The entry's slots as wire bytes, if they were encoded at these levels (the default ones);
        None: other level sets are encoded per request, for the requested window only."""
        if tuple(float(q) for q in quantiles) != DEFAULT_QUANTILES or not entry.default_points:
            return None
        return entry.default_points


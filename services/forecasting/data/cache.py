"""On-disk cache for parsed data sets.

Parsing the 2-million-row UCI CSV takes seconds; the parsed 15-minute series is
stored as a pickle (pandas only, no parquet engine needed) under ``out/cache/``
of the repository, or under ``$VPP_FORECAST_CACHE`` when set.  The cache key
includes the source file's size and mtime and a format version, so a changed
source or a changed parser never serves stale data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """Directory for cached parsed data (created on demand)."""
    env = os.environ.get("VPP_FORECAST_CACHE")
    return Path(env) if env else REPO_ROOT / "out" / "cache"


def _key(name: str, source: Path, version: str) -> str:
    st = source.stat()
    raw = f"{name}|{source.resolve()}|{st.st_size}|{int(st.st_mtime)}|{version}"
    return f"{name}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}.pkl"


def cached(name: str, source: Path, version: str, build: Callable[[], T]) -> T:
    """Return ``build()``'s result, reading/writing a pickle keyed on ``source``."""
    path = cache_dir() / _key(name, source, version)
    if path.exists():
        try:
            obj: Any = pd.read_pickle(path)
            return obj  # type: ignore[no-any-return]
        except Exception:  # corrupt or incompatible cache: rebuild
            pass
    result = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pd.to_pickle(result, tmp)
        tmp.replace(path)
    except OSError:  # read-only checkout: run without a cache
        pass
    return result

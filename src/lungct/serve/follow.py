"""Serving a registry alias (`lungct serve --model-uri models:/lungct@champion`) and following it.

At start the alias's version is downloaded (lungct.tracking.registry) and served like any run. Every
`reload_interval_s` the alias is read again; when it has moved, the new version is downloaded and loaded in a
worker thread while the old one keeps answering, then the app's service is swapped in one assignment. Requests
that started on the old service finish on it (each holds its own reference); it is closed once they have had
`shutdown_timeout_s` plus a margin. A version that fails to download or load is logged and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lungct.serve.settings import ServeSettings

log = logging.getLogger("lungct.serve")
GRACE_S = 30.0  # beyond shutdown_timeout_s, before a replaced service is closed


class ModelFollower:
    def __init__(self, settings: ServeSettings):
        from lungct.tracking.registry import Registry, parse_model_uri

        self.settings = settings
        name, self.alias = parse_model_uri(settings.model_uri or "")
        self.registry = Registry(settings.tracking_uri, name, create=False)
        self.version: str | None = None

    def resolve(self) -> ServeSettings:
        """The settings with `run` set to the alias's current version, downloaded."""
        self.version, path = self.registry.download(self.alias, self.settings.model_cache)
        log.info("serving %s: version %s (%s)", self.settings.model_uri, self.version, path)
        return self.settings.model_copy(update={"run": path})

    async def watch(self, swap: Callable[[ServeSettings], Any]) -> None:
        """Poll the alias for ever; on a move, load the new version off the event loop and hand it to `swap`."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                current = await asyncio.to_thread(self.registry.alias, self.alias)
                if current is None or current == self.version:
                    continue
                new_settings = await asyncio.to_thread(self.resolve)
                await asyncio.to_thread(swap, new_settings)
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry unreachable, a broken version: keep serving what works
                log.exception("could not follow %s; still serving version %s", self.settings.model_uri, self.version)

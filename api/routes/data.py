"""The data route: ``GET /data/candles`` pages the server's dataset (or its watched file) as OHLCV candles."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.bodies import error_response
from orchestrator.errors import DataValidationError
from orchestrator.messages import Candle

__all__ = ["CandleSource", "data_router", "lazy_candles"]


class CandleSource(Protocol):
    """What the route needs of ``orchestrator.data.watch.CandleBook`` (pandas only when used)."""

    def page(self, since: str | None, limit: int) -> tuple[list[Candle], str | None]: ...


def lazy_candles(source: str, date_format: str | None = None) -> Callable[[], CandleSource]:
    """A ``CandleBook`` of ``source`` (``sp500`` or a file), loaded on the first call, then kept."""
    cache: list[CandleSource] = []

    def book() -> CandleSource:
        from orchestrator.data.watch import CandleBook

        if not cache:
            cache.append(CandleBook.load(source, date_format))
        return cache[0]

    return book


def data_router(book: Callable[[], CandleSource]) -> APIRouter:
    """``book()`` returns the ``CandleBook`` of the server's dataset (it may load it: off the loop)."""
    router = APIRouter(prefix="/data", tags=["data"])

    @router.get("/candles", summary="Page the dataset's OHLCV candles")
    async def candles(
        since: str | None = Query(None, max_length=64, description="exclusive ISO timestamp cursor"),
        limit: int = Query(500, ge=1, le=5000),
    ) -> JSONResponse:
        try:
            source = await asyncio.to_thread(book)
            page, cursor = source.page(since, limit)
        except DataValidationError as err:
            return error_response(422, str(err))
        return JSONResponse({"candles": [c.model_dump() for c in page], "next_since": cursor})

    return router

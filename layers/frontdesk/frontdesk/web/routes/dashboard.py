"""Dashboard routes (staff, own clinic): pre-calculated daily metrics, never raw rows.

Freshness travels with the data: `computedAt` (the start of the last metrics run) and
`stalenessSeconds`. Cache-Control lets a client keep the answer until the next run is due
(the schedule's rate minus the staleness); the ETag changes only when the numbers or the
run do, so a revalidation answers 304 without a body.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from frontdesk.dashboard import daily_metrics
from frontdesk.dashboard.daily_metrics import DailyMetrics, Freshness, MetricsSummary
from frontdesk.web.auth import GuardedRoute, Staff
from frontdesk.web.context import Web, WebContext
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=GuardedRoute, tags=["metrics"], responses=ERROR_RESPONSES)

IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"}
}


def cache_headers(data: Freshness, refresh_seconds: int) -> dict[str, str]:
    staleness = data.staleness_seconds
    max_age = 0 if staleness is None else max(0, refresh_seconds - staleness)
    # Everything but the staleness, which changes every second while the numbers do not.
    stable = data.model_dump(mode="json", exclude={"staleness_seconds"})
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    return {
        "Cache-Control": f"private, max-age={max_age}",
        "ETag": f'W/"{digest[:32]}"',
        "Vary": "Authorization",
    }


def _answer[F: Freshness](
    web: WebContext, data: F, if_none_match: str | None, operation: str
) -> Envelope[F] | Response:
    headers = cache_headers(data, web.services.settings.metrics_refresh_seconds)
    if if_none_match is not None and headers["ETag"] in {
        tag.strip() for tag in if_none_match.split(",")
    }:
        return Response(status_code=304, headers=headers)
    return web.ok(data, operation, "dailyMetrics", headers=headers)


@router.get(
    "/metrics/daily",
    response_model=Envelope[DailyMetrics],
    summary="The clinic's pre-calculated days in [from, to] (default: the last 30 days)",
    responses=NOT_MODIFIED,
)
def read_daily(
    staff: Staff,
    web: Web,
    day_from: Annotated[date | None, Query(alias="from")] = None,
    day_to: Annotated[date | None, Query(alias="to")] = None,
    if_none_match: IfNoneMatch = None,
) -> Envelope[DailyMetrics] | Response:
    # Pre-calculated rows, minutes old by design: the replica when there is one.
    data = daily_metrics.daily(
        web.services.reader, clinic_id=staff.clinic_id, day_from=day_from, day_to=day_to
    )
    return _answer(web, data, if_none_match, "getDailyMetrics")


@router.get(
    "/metrics/summary",
    response_model=Envelope[MetricsSummary],
    summary="Today against the 7 and the 30 days before it (pre-calculated)",
    responses=NOT_MODIFIED,
)
def read_summary(
    staff: Staff, web: Web, if_none_match: IfNoneMatch = None
) -> Envelope[MetricsSummary] | Response:
    data = daily_metrics.summary(web.services.reader, clinic_id=staff.clinic_id)
    return _answer(web, data, if_none_match, "getMetricsSummary")

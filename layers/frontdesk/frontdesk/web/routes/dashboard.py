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

from fastapi import APIRouter, Header, Query, Request, Response

from frontdesk.config import get_settings
from frontdesk.dashboard import daily_metrics as metrics
from frontdesk.platform.db import get_database
from frontdesk.web.auth import Staff
from frontdesk.web.http import ERROR_RESPONSES, envelope

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)

IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]


def cache_headers(data: dict[str, Any]) -> dict[str, str]:
    refresh = get_settings().metrics_refresh_seconds
    staleness = data["stalenessSeconds"]
    max_age = 0 if staleness is None else max(0, refresh - staleness)
    # Everything but the staleness, which changes every second while the numbers do not.
    stable = {k: v for k, v in data.items() if k != "stalenessSeconds"}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "Cache-Control": f"private, max-age={max_age}",
        "ETag": f'W/"{digest[:32]}"',
        "Vary": "Authorization",
    }


def _answer(
    request: Request, data: dict[str, Any], if_none_match: str | None, operation: str
) -> Response:
    headers = cache_headers(data)
    if if_none_match is not None and headers["ETag"] in {
        tag.strip() for tag in if_none_match.split(",")
    }:
        return Response(status_code=304, headers=headers)
    return envelope(
        request, data, operation=operation, entity="dailyMetrics", affected_ids=[], headers=headers
    )


@router.get(
    "/metrics/daily",
    summary="The clinic's pre-calculated days in [from, to] (default: the last 30 days)",
    responses={304: {"description": "Not modified (If-None-Match)"}},
)
def read_daily(
    request: Request,
    staff: Staff,
    day_from: Annotated[date | None, Query(alias="from")] = None,
    day_to: Annotated[date | None, Query(alias="to")] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    data = metrics.daily(
        get_database(), clinic_id=staff.clinic_id, day_from=day_from, day_to=day_to
    )
    return _answer(request, data, if_none_match, "getDailyMetrics")


@router.get(
    "/metrics/summary",
    summary="Today against the 7 and the 30 days before it (pre-calculated)",
    responses={304: {"description": "Not modified (If-None-Match)"}},
)
def read_summary(request: Request, staff: Staff, if_none_match: IfNoneMatch = None) -> Response:
    data = metrics.summary(get_database(), clinic_id=staff.clinic_id)
    return _answer(request, data, if_none_match, "getMetricsSummary")

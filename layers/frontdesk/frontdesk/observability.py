"""Powertools Logger and Metrics, one of each per process.

The logger writes JSON with the request id as correlation id. Nothing that logs may pass
PII: log ids, counts and error types, never a name, email, phone or message body.

Tracing is Lambda's own (`Tracing: Active` in template.yaml). Powertools Tracer is left
out on purpose: importing aws_xray_sdk costs about 0.5 s of every cold start here.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

logger = Logger(service="frontdesk")
metrics = Metrics(namespace="Frontdesk", service="frontdesk")

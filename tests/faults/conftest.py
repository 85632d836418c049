"""Fault tests reuse the integration fixtures: real PostgreSQL, moto from template.yaml."""

from tests.integration.conftest import api, app, moto_url, notify, stack  # noqa: F401

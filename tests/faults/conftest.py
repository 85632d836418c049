"""Fault tests reuse the integration fixtures: real PostgreSQL, moto from template.yaml."""

from tests.integration.conftest import app, moto_url, stack  # noqa: F401

"""Fault tests reuse the integration fixtures: real PostgreSQL, moto from template.yaml."""

from tests.integration.conftest import app, moto_url, shared_stack, stack  # noqa: F401

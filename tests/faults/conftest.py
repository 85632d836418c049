"""Fault tests reuse the integration fixtures: real PostgreSQL, moto from template.yaml."""

from tests.integration.conftest import (  # noqa: F401
    api,
    app,
    moto_url,
    notify,
    shared_stack,
    stack,
)

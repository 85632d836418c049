from tests.integration.conftest import api, app, moto_url, notify, stack  # noqa: F401

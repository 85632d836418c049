"""OpsFunction: API Gateway HTTP API (/ops routes) -> FastAPI via Mangum (frontdesk.web)."""

from frontdesk.web.app import make_handler, make_ops_app

app = make_ops_app()
handler = make_handler(app, "OpsFunction")

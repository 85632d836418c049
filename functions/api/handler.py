"""ApiFunction: API Gateway HTTP API -> FastAPI via Mangum (frontdesk.web)."""

from frontdesk.web.app import make_app, make_handler

app = make_app()
handler = make_handler(app)

"""ApiFunction: API Gateway HTTP API -> FastAPI via Mangum."""

from aws_lambda_powertools.logging import correlation_paths
from mangum import Mangum

from frontdesk.observability import logger
from frontdesk.web.app import create_app

app = create_app()
_asgi = Mangum(
    app,
    lifespan="off",
    # Without it Mangum base64-encodes problem+json bodies.
    text_mime_types=["application/json", "application/problem+json"],
)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def handler(event, context):  # type: ignore[no-untyped-def]
    return _asgi(event, context)

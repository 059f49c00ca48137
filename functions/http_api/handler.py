"""Lambda entry point of the HTTP API: Mangum adapts API Gateway v2 events to the FastAPI app."""

from typing import Any

from mangum import Mangum

from functions.http_api.app import app
from layers.shared.observability import logger, metrics, tracer

_asgi = Mangum(app, lifespan="off")


# A plain function (not the Mangum object) so Powertools can read handler.__name__.
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _asgi(event, context)

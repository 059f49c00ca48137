#!/bin/bash
# Start script of a streaming function: the AWS Lambda Web Adapter (/opt/bootstrap, set as
# AWS_LAMBDA_EXEC_WRAPPER) runs the function's handler, which is this file, then forwards each invoke
# as an HTTP request to the server it starts and streams the response back.
# AGENTSERVER_ASGI_APP ("package.module:attribute") comes from the topology's handler.
set -euo pipefail
# The shared layer (/opt/python) and the function code are on sys.path only inside the Python runtime,
# not for a process this script starts.
export PYTHONPATH="${LAMBDA_TASK_ROOT:-.}:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec python -m uvicorn "${AGENTSERVER_ASGI_APP:?AGENTSERVER_ASGI_APP is not set}" \
  --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" --no-access-log

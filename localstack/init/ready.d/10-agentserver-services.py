#!/usr/bin/env python3
"""Runs inside LocalStack once it is ready: says which services the AgentServer stack needs are missing.

The free edition accepts the whole template (CloudFormation skips resource types it does not know),
so a missing service shows up only later, as an API that does not answer. This makes it visible at start.
"""

import json
import urllib.request

# Service -> what of the stack depends on it.
NEEDED = {
    "cloudformation": "the deployment itself",
    "s3": "CDK assets and the console bucket",
    "dynamodb": "tables (state)",
    "sqs": "queues and their DLQs",
    "secretsmanager": "provider API keys",
    "iam": "function roles",
    "lambda": "every function, and the console upload (a Lambda-backed custom resource)",
    "logs": "function and access logs",
    "events": "the reaper schedule",
    "apigateway": "the HTTP and WebSocket APIs (API Gateway v2)",
    "cloudfront": "the console distribution",
}

with urllib.request.urlopen("http://localhost:4566/_localstack/health", timeout=5) as response:
    health = json.load(response)

services = health.get("services", {})
edition = health.get("edition", "unknown")
print(f"agentserver: LocalStack {health.get('version', '?')} ({edition} edition)")
for service, role in NEEDED.items():
    state = services.get(service, "not available")
    if state not in {"available", "running"}:
        print(f"agentserver: {service} is {state}: {role} will not work")

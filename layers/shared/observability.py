"""Powertools logger, tracer and metrics, created once and shared by every entry point."""

import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer

# An invocation that records no metric is normal (a health check); Powertools warns on each one.
warnings.filterwarnings("ignore", message="No application metrics to publish")

SERVICE = "agentserver"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="agentserver", service=SERVICE)

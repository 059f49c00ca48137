"""Asynchronous triggers: SQS event sources (partial batch failures) and EventBridge schedules."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra_cdk.naming import construct_id
from layers.shared.topology import Topology


def check_queue_consumers(topology: Topology) -> None:
    """Lambda refuses an SQS trigger whose function may outlive the queue's visibility timeout."""
    for spec in topology.functions:
        if spec.sqs is None:
            continue
        queue = topology.queue(spec.sqs.queue)
        if spec.timeout_seconds > queue.visibility_timeout_seconds:
            raise ValueError(
                f"function {spec.name!r} times out after {spec.timeout_seconds} s, longer than the "
                f"{queue.visibility_timeout_seconds} s visibility timeout of queue {queue.name!r}"
            )


class EventSources(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        topology: Topology,
        functions: dict[str, lambda_.Function],
        queues: dict[str, sqs.Queue],
    ) -> None:
        super().__init__(scope, construct_id_)
        check_queue_consumers(topology)
        for spec in topology.functions:
            function = functions[spec.name]
            if spec.sqs is not None:
                window = spec.sqs.max_batching_window_seconds
                function.add_event_source(
                    event_sources.SqsEventSource(
                        queues[spec.sqs.queue],
                        batch_size=spec.sqs.batch_size,
                        max_batching_window=Duration.seconds(window) if window else None,
                        # Handlers return batchItemFailures, so one bad message does not redeliver the batch.
                        report_batch_item_failures=True,
                    )
                )
            if spec.schedule is not None:
                events.Rule(
                    self,
                    construct_id(spec.name, "Schedule"),
                    description=f"Runs {spec.name} on {spec.schedule.expression}",
                    schedule=events.Schedule.expression(spec.schedule.expression),
                    # A missed run is repaired by the next one, so no retries pile up behind it.
                    targets=[targets.LambdaFunction(function, retry_attempts=0)],
                )

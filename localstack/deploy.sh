#!/usr/bin/env bash
# Bootstrap and deploy the AgentServer stack into the LocalStack of docker-compose.yml.
# Needs `cdklocal` (npm package aws-cdk-local) on PATH; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

endpoint="${LOCALSTACK_ENDPOINT:-http://localhost:4566}"
# cdklocal reads both endpoints; its own default S3 host does not resolve offline.
export AWS_ENDPOINT_URL="$endpoint"
export AWS_ENDPOINT_URL_S3="$endpoint"
export AWS_S3_FORCE_PATH_STYLE=1
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="$AWS_REGION"
export CDK_DEFAULT_ACCOUNT=000000000000
export CDK_DEFAULT_REGION="$AWS_REGION"
export CDK_DISABLE_VERSION_CHECK=1
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1

curl -fsS "$endpoint/_localstack/health" >/dev/null || { echo "LocalStack does not answer at $endpoint" >&2; exit 1; }

cdklocal bootstrap "aws://$CDK_DEFAULT_ACCOUNT/$AWS_REGION"
# A throwaway stack: let `cdklocal destroy` remove tables, buckets and secrets too.
cdklocal deploy --require-approval never -c agentserver:retain_data=false "$@"

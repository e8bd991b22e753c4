#!/bin/sh
# LocalStack runs this once it is ready (/etc/localstack/init/ready.d): the queues with their
# dead-letter queues, the buckets, and mParticle's S3 output announcing new objects on SQS.
set -eu
region=us-east-1
account=000000000000
arn() { echo "arn:aws:sqs:$region:$account:$1"; }

# Settings that are safe with the code (scripts/check-deploy runs this script and checks them;
# deploy/aws/mpconnect.yaml has the same):
# - 14 days' retention everywhere, far longer than a destination's retry window (4 h).
# - The ingest queue and S3 notifications dead-letter on SQS's side only well past
#   queues.max_receives (10), after which mpconnect itself dead-letters with the reason.
# - Retry queues have no RedrivePolicy: delivery retries a parked batch by receiving it again,
#   every receive counts, and a batch must be retried for the whole retry window; delivery
#   dead-letters it itself when the window closes.
retention=1209600
queue_with_dlq() {
    name=$1
    visibility=$2
    awslocal sqs create-queue --queue-name "$name-dlq" \
        --attributes "{\"MessageRetentionPeriod\":\"$retention\"}" > /dev/null
    redrive="{\\\"deadLetterTargetArn\\\":\\\"$(arn "$name-dlq")\\\",\\\"maxReceiveCount\\\":\\\"20\\\"}"
    attributes="{\"VisibilityTimeout\":\"$visibility\",\"MessageRetentionPeriod\":\"$retention\",\"RedrivePolicy\":\"$redrive\"}"
    awslocal sqs create-queue --queue-name "$name" --attributes "$attributes" > /dev/null
}

retry_queue() {
    attributes="{\"VisibilityTimeout\":\"120\",\"MessageRetentionPeriod\":\"$retention\"}"
    awslocal sqs create-queue --queue-name "$1" --attributes "$attributes" > /dev/null
}

# The ingest queue's own DLQ is written by ingest and transform (refused batches), too.
queue_with_dlq mpconnect-ingest 60
retry_queue mpconnect-retry-local-file
retry_queue mpconnect-retry-export
queue_with_dlq mpconnect-s3-notifications 300

awslocal s3 mb s3://mpconnect > /dev/null
awslocal s3 mb s3://mparticle-output > /dev/null
awslocal s3api put-bucket-notification-configuration --bucket mparticle-output \
    --notification-configuration "{\"QueueConfigurations\":[{\"QueueArn\":\"$(arn mpconnect-s3-notifications)\",\"Events\":[\"s3:ObjectCreated:*\"]}]}"
# The compose healthcheck waits for this: everything above exists.
touch /tmp/mpconnect-ready
echo "mpconnect: queues, buckets and notifications ready"

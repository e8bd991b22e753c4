#!/bin/sh
# LocalStack runs this once it is ready (/etc/localstack/init/ready.d): the queues with their
# dead-letter queues, the buckets, and mParticle's S3 output announcing new objects on SQS.
set -eu
region=us-east-1
account=000000000000
arn() { echo "arn:aws:sqs:$region:$account:$1"; }

queue_with_dlq() {
    name=$1
    visibility=$2
    awslocal sqs create-queue --queue-name "$name-dlq" > /dev/null
    attributes="{\"VisibilityTimeout\":\"$visibility\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$(arn "$name-dlq")\\\",\\\"maxReceiveCount\\\":\\\"5\\\"}\"}"
    awslocal sqs create-queue --queue-name "$name" --attributes "$attributes" > /dev/null
}

# The ingest queue's own DLQ is written by ingest and transform (refused batches), too.
queue_with_dlq mpconnect-ingest 60
queue_with_dlq mpconnect-retry-local-file 120
queue_with_dlq mpconnect-retry-export 120
queue_with_dlq mpconnect-s3-notifications 300

awslocal s3 mb s3://mpconnect > /dev/null
awslocal s3 mb s3://mparticle-output > /dev/null
awslocal s3api put-bucket-notification-configuration --bucket mparticle-output \
    --notification-configuration "{\"QueueConfigurations\":[{\"QueueArn\":\"$(arn mpconnect-s3-notifications)\",\"Events\":[\"s3:ObjectCreated:*\"]}]}"
echo "mpconnect: queues, buckets and notifications ready"

//! Shared stage machinery (config, telemetry, queues, object store). Filled in by the queue issue.

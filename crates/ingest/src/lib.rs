//! Source adapters (HTTP Events API, webhook, S3 notifications). Filled in by the ingest issues.

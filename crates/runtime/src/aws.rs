//! AWS client settings shared by the SQS queue and the S3 store: region and credentials from
//! the standard chain (env, profile, IAM roles for service accounts), and an endpoint override
//! for LocalStack or moto.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Overrides the region from the standard chain.
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:4566` for LocalStack.
    pub endpoint_url: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), which LocalStack and moto need.
    pub force_path_style: bool,
}

/// Loads the shared AWS configuration.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            // Above SQS's longest long poll (20 s).
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

pub fn s3_client(config: &SdkConfig, settings: &AwsSettings) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(settings.force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

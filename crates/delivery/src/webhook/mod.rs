//! The webhook destination: one outbound-dialect batch per `POST`, as mParticle's Webhook
//! output sends them, with a configured `Authorization`.

pub mod config;
pub mod driver;

pub use config::{WebhookConfig, WebhookSettings};
pub use driver::WebhookDriver;

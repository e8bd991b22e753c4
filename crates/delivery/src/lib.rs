//! Delivery gRPC server and destination drivers. Filled in by the delivery issue.

//! Queue consumer, connection rules, routing and the delivery client. Filled in by the transform issue.

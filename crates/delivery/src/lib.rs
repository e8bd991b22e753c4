//! The delivery stage: the `DeliveryService` gRPC server and the destination drivers (one
//! folder per driver). So far: the mParticle driver's request builder, which packs batches
//! into Events API requests within mParticle's limits.

pub mod mparticle;

//! ponix-writer: stores `ProcessedEnvelope` messages from NATS JetStream in ClickHouse.
//!
//! Modules follow the data path: [`config`] → [`envelope`] (decode and validate) →
//! [`payload`] (Struct ↔ JSON) → [`row`] (conversion) → [`store`] (ClickHouse) →
//! [`streams`] and [`consumer`] (JetStream) → [`run`] (wiring, shutdown). [`check`] is
//! the pre-flight of `ponix-writer check`.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod demo;
pub mod envelope;
#[doc(hidden)]
pub mod fuzz_support;
pub mod health;
pub mod http;
pub mod lag;
pub mod lease;
pub mod metrics;
pub mod migrate;
pub mod payload;
pub mod row;
pub mod run;
pub mod sample;
pub mod store;
pub mod streams;
pub mod tls;

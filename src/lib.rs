//! sp-broker: an Amazon Selling Partner API connection broker.
//!
//! Start at `migrations/`, then [`app`] (state, router, serve), then
//! [`authorization`] (the consent flow) and [`crypto`] (how secrets are sealed).

pub mod amazon;
pub mod api_keys;
pub mod app;
pub mod authorization;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod rotation;
pub mod sandbox;
pub mod secrets;

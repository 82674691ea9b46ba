//! sp-broker: an Amazon Selling Partner API connection broker.
//!
//! Start at `migrations/`, then [`app`] (the composition root: every service
//! built once with its handles), then [`broker`] (the token cache and the
//! refresh engine), [`authorization`] (the consent flow) and [`crypto`] (how
//! secrets are sealed). [`http`] is the outside: pages, the `/v1` API, OAuth.

pub mod amazon;
pub mod api_keys;
pub mod app;
pub mod app_secrets;
pub mod authorization;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod jobs;
pub mod logging;
pub mod login_links;
pub mod metrics;
pub mod notify;
pub mod ops_summary;
pub mod rotation;
pub mod sandbox;
pub mod secrets;
pub mod sweep;
pub mod tenants;
pub mod throttle;
pub mod webhooks;

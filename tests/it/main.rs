//! The integration tests: one binary (one link, one build), each test its own
//! process under nextest, on its own fresh database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_routes;
mod app_secrets;
mod authorization_flow;
mod broker;
mod browser;
mod callback_refusals;
mod common;
mod csrf;
mod database_outage;
mod engine_defects;
mod events;
mod fault_drills;
mod flow_support;
mod hostile_clients;
mod key_rotation;
mod login_link;
mod login_uri;
mod lwa_compat;
mod metrics;
mod multi_instance;
mod ops_dashboard;
mod python_support;
mod reconnect_disconnect;
mod refresh_engine;
mod refresh_races;
mod rejections;
mod schemathesis;
mod sdk;
mod secrets_in_logs;
mod security_headers;
mod smoke;
mod startup;
mod sweep;
mod token_support;
mod tokens_api;
mod verification;
mod xss;

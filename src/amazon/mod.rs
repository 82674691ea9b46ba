//! Amazon's side: the marketplaces table, consent URLs and the allowlist for
//! Amazon's callback URIs, the Login with Amazon client and the SP-API calls.
//! Nothing here logs a token, a code or a client secret.

pub mod consent;
pub mod lwa;
pub mod marketplaces;
pub mod spapi;

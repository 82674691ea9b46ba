//! Amazon's callback query (`GET /oauth/amazon/callback?…`), decoded as axum's
//! `Query` decodes it: every query is complete or incomplete, never a panic;
//! a complete one carries the three values exactly as they came.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use sp_broker::authorization::is_plausible_selling_partner_id;
use sp_broker::http::oauth::CallbackQuery;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_urlencoded::from_bytes::<HashMap<String, String>>(data) else {
        return;
    };
    let value = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    match CallbackQuery::from_params(&params) {
        CallbackQuery::Complete {
            state,
            selling_partner_id,
            code,
        } => {
            assert_eq!(Some(state), value("state"));
            assert_eq!(Some(selling_partner_id), value("selling_partner_id"));
            assert_eq!(Some(code.expose_secret()), value("spapi_oauth_code"));
            // The id check the authorizer applies next is total too.
            let plausible = is_plausible_selling_partner_id(selling_partner_id);
            assert_eq!(
                plausible,
                selling_partner_id.len() <= 64
                    && selling_partner_id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric())
            );
        }
        CallbackQuery::Incomplete { state } => {
            assert_eq!(state, value("state"));
            assert!(
                value("state").is_none()
                    || value("selling_partner_id").is_none()
                    || value("spapi_oauth_code").is_none()
            );
        }
    }
});

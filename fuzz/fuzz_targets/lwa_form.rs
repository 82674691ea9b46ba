//! The LWA-compatible form (`POST /auth/o2/token`): any body under any of the
//! content types an SDK sends, and any `Authorization` header, gives the
//! parameters or an LWA `invalid_request` / `invalid_client`, never a panic.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sp_broker::http::lwa_compat::{presented_secret, LwaForm};

const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/x-www-form-urlencoded;charset=UTF-8"),
    Some("application/json"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The rest is the body; up to its first newline, also a header value.
    let content_type = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    let form = match LwaForm::parse(content_type, rest) {
        Ok(form) => form,
        Err(error) => {
            assert_eq!(error.code(), "invalid_request");
            return;
        }
    };
    for value in [
        &form.grant_type,
        &form.refresh_token,
        &form.client_id,
        &form.client_secret,
        &form.scope,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!value.is_empty() && !value.chars().any(char::is_control));
    }
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(line) {
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Err(error) = presented_secret(&headers, &form) {
        assert!(matches!(error.code(), "invalid_request" | "invalid_client"));
    }
});

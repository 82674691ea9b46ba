//! The `/v1` API's JSON bodies (`parse_body`), for each request type: any
//! bytes give the value or a 422 `invalid_request`, never a panic or a 500.
#![no_main]

use axum::body::Bytes;
use axum::http::StatusCode;
use libfuzzer_sys::fuzz_target;
use sp_broker::http::api::parse_body;
use sp_broker::http::api::tenants::{CreateLoginLink, CreateTenant};
use sp_broker::http::api::tokens::{AccessTokenRequest, GrantlessRequest, RdtRequest};

fn refused_as_invalid<T: serde::de::DeserializeOwned>(body: &Bytes) {
    if let Err(error) = parse_body::<T>(body) {
        assert_eq!(error.code(), "invalid_request");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    refused_as_invalid::<CreateTenant>(&body);
    refused_as_invalid::<CreateLoginLink>(&body);
    refused_as_invalid::<AccessTokenRequest>(&body);
    refused_as_invalid::<RdtRequest>(&body);
    refused_as_invalid::<GrantlessRequest>(&body);
});

//! Every answer in our own shape (CONTRACT §10). Rejections that axum,
//! tower-http or hyper produce themselves (405 without a body, 413, 415 and
//! 422 as plain text, the whole-request deadline) are rendered again here:
//! problem+json under `/v1`, LWA's error shape on the token endpoints, the
//! HTML error page everywhere else. A page POST the framework refused is 403:
//! a body we could not read carried no CSRF token we could check.
//!
//! Our own errors are recognised by their `Content-Type` (problem+json,
//! JSON, HTML) and pass untouched; a success costs one comparison.

use super::api::ApiError;
use super::lwa_compat::LwaError;
use super::pages::PageError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// The whole request, body included, must be answered within this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which error shape a path answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Api,
    Lwa,
    Page,
    /// `/healthz`, `/readyz`, `/metrics`: plain text for machines, as they are.
    Probe,
}

fn family(path: &str) -> Family {
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        Family::Probe
    } else if path.starts_with("/v1/") || path == "/v1" || path == "/openapi.json" {
        Family::Api
    } else if path == "/auth/o2/token" || path == "/sandbox/auth/o2/token" {
        Family::Lwa
    } else {
        Family::Page
    }
}

/// Ours: problem+json, LWA's JSON, an HTML page.
fn is_ours(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("application/problem+json")
                || t.starts_with("application/json")
                || t.starts_with("text/html")
        })
}

/// The middleware: renders framework rejections, and answers 408 in the
/// route's own shape when a request is not done within [`REQUEST_TIMEOUT`].
pub async fn render_rejections(request: Request, next: Next) -> Response {
    let family = family(request.uri().path());
    let is_page_post = family == Family::Page && request.method() == Method::POST;
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request not done within the request timeout: answered 408");
            return render(family, false, StatusCode::REQUEST_TIMEOUT, None);
        }
    };
    let status = response.status();
    if status.as_u16() < 400 || family == Family::Probe || is_ours(&response) {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    render(family, is_page_post, status, allow)
}

fn render(
    family: Family,
    is_page_post: bool,
    status: StatusCode,
    allow: Option<HeaderValue>,
) -> Response {
    let (code, title, detail) = describe(status);
    let mut response = match family {
        Family::Api => ApiError::new(status, code, title, detail).into_response(),
        Family::Lwa => {
            let lwa_code = match status {
                StatusCode::TOO_MANY_REQUESTS => "rate_limited",
                s if s.is_server_error() => "server_error",
                _ => "invalid_request",
            };
            LwaError::new(status, lwa_code, detail).into_response()
        }
        Family::Page if is_page_post && status.is_client_error() => {
            PageError::forbidden().into_response()
        }
        Family::Page | Family::Probe => PageError::new(status, title, detail).into_response(),
    };
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// A code, a title and a sentence for a status the framework answered.
fn describe(status: StatusCode) -> (&'static str, &'static str, &'static str) {
    match status {
        StatusCode::NOT_FOUND => ("not_found", "Not found", "There is nothing at this address."),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "Method not allowed",
            "This address does not answer this HTTP method; the Allow header lists the ones it does.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "invalid_request",
            "Request too large",
            "The request body is larger than this address accepts (64 KiB).",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request",
            "Unsupported content type",
            "Send the body with the content type this address takes (application/json for the API, a form for pages).",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "Request timeout",
            "The request was not complete within 30 seconds; nothing was changed.",
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            "rate_limited",
            "Too many requests",
            "Too many requests; wait and try again.",
        ),
        s if s.is_server_error() => (
            "internal_error",
            "Internal error",
            "Something went wrong on our side.",
        ),
        _ => (
            "invalid_request",
            "Invalid request",
            "The request could not be read: check its path, query, headers and body.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_answers_in_its_own_shape() {
        assert_eq!(family("/v1/connections/x"), Family::Api);
        assert_eq!(family("/openapi.json"), Family::Api);
        assert_eq!(family("/auth/o2/token"), Family::Lwa);
        assert_eq!(family("/sandbox/auth/o2/token"), Family::Lwa);
        assert_eq!(family("/settings/connections"), Family::Page);
        assert_eq!(family("/v1x"), Family::Page);
    }
}

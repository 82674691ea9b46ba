//! Amazon's notification bodies (`POST /v1/app/notifications`): any bytes are
//! a checked notification or a "malformed" refusal; a new secret taken is
//! always printable, trimmed and at most 512 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use sp_broker::app_secrets::{Notification, NotificationError};

fuzz_target!(|data: &[u8]| {
    match Notification::parse(data) {
        Ok(Notification::NewSecret { secret, .. }) => {
            let value = secret.expose_secret();
            assert!(!value.is_empty() && value.trim() == value);
            assert!(value.chars().count() <= 512);
            assert!(!value.chars().any(char::is_control));
        }
        Ok(Notification::SecretExpiry { reason, .. }) => {
            if let Some(reason) = reason {
                assert!(reason.chars().count() <= 100 && !reason.chars().any(char::is_control));
            }
        }
        Ok(Notification::Other { notification_type }) => {
            if let Some(shown) = notification_type {
                assert!(shown.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
            }
        }
        Err(NotificationError::Malformed(_)) => {}
        Err(other) => panic!("parsing alone answered {other}"),
    }
});

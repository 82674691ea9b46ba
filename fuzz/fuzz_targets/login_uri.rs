//! The Login URI check (`amazon_callback_uri`): whatever the text, an accepted
//! URI is https on the default port to a Seller/Vendor Central or retail host,
//! with no userinfo; in the sandbox, also the sandbox's own origin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sp_broker::amazon::consent::validate_amazon_callback_uri;
use sp_broker::amazon::marketplaces;
use sp_broker::config::{Config, Settings};
use std::sync::LazyLock;

fn config(amazon: &str) -> Config {
    let settings = Settings {
        database_url: "postgres://unused".into(),
        listen: "127.0.0.1:0".into(),
        public_url: "https://broker.example.com".into(),
        amazon: Some(amazon.into()),
        app_id: Some("amzn1.sp.solution.fuzz".into()),
        lwa_client_id: Some("amzn1.application-oa2-client.fuzz".into()),
        lwa_client_secret: Some("fuzz-secret".into()),
        app_draft: "false".into(),
        log: "info".into(),
        log_format: "text".into(),
        encryption_keys: Some("k:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        sweep_interval_seconds: "0".into(),
        sweep_stale_after_seconds: "86400".into(),
        sweep_rate: "2".into(),
        ..Settings::default()
    };
    match Config::from_settings(&settings) {
        Ok(config) => config,
        Err(error) => panic!("the fuzz config does not parse: {error}"),
    }
}

static LIVE: LazyLock<Config> = LazyLock::new(|| config("live"));
static SANDBOX: LazyLock<Config> = LazyLock::new(|| config("sandbox"));

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for config in [&*LIVE, &*SANDBOX] {
        let Some(url) = validate_amazon_callback_uri(config, raw) else {
            continue;
        };
        assert!(
            url.username().is_empty() && url.password().is_none(),
            "{raw}"
        );
        let own_origin = config
            .seller_central_override
            .as_ref()
            .is_some_and(|o| o.origin() == url.origin());
        if !own_origin {
            let host = url.host_str().unwrap_or_default();
            let bare = host.strip_prefix("www.").unwrap_or(host);
            assert_eq!(url.scheme(), "https", "{raw}");
            assert_eq!(url.port(), None, "{raw}");
            assert!(
                marketplaces::central_hosts().any(|h| h == host)
                    || marketplaces::retail_domains().any(|d| d == bare),
                "{raw}"
            );
        }
    }
});

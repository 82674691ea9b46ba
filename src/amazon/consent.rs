//! Consent URLs (where the seller's browser goes to authorize the app) and the
//! checks that keep the Login URI and `return_to` from being open redirects.

use super::marketplaces::{self, AccountType, Marketplace};
use crate::config::Config;
use url::Url;

/// `{Seller or Vendor Central}/apps/authorize/consent?application_id=…&state=…&redirect_uri=…`
/// plus `version=beta` for a draft app.
pub fn consent_url(
    config: &Config,
    marketplace: &Marketplace,
    account_type: AccountType,
    state: &str,
) -> String {
    let base = match &config.seller_central_override {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => marketplace.central_url(account_type).to_owned(),
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("application_id", &config.app_id)
        .append_pair("state", state)
        .append_pair("redirect_uri", &config.redirect_uri());
    if config.app_draft {
        query.append_pair("version", "beta");
    }
    format!("{base}/apps/authorize/consent?{}", query.finish())
}

/// Every origin a consent URL can point at (for the CSP's `form-action`).
pub fn consent_origins(config: &Config) -> Vec<String> {
    let mut origins: Vec<String> = match &config.seller_central_override {
        Some(url) => vec![url.origin().ascii_serialization()],
        None => marketplaces::MARKETPLACES
            .iter()
            .flat_map(|m| [m.seller_central, m.vendor_central])
            .map(str::to_owned)
            .collect(),
    };
    origins.sort();
    origins.dedup();
    origins
}

/// The authority part of an absolute URL as written (between `//` and the path).
fn raw_authority(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix("https://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Checks Amazon's `amazon_callback_uri` for the Login URI flow: `https` on the
/// default port, a host that is exactly a Seller/Vendor Central host of the
/// marketplace table or a marketplace's retail domain (with or without `www.`),
/// or exactly the origin of `SP_BROKER_SELLER_CENTRAL_URL`. The host must be
/// written plainly: no userinfo, port, percent-encoding, upper case or backslash.
pub fn validate_amazon_callback_uri(config: &Config, raw: &str) -> Option<Url> {
    if raw.is_empty()
        || raw.len() > 2048
        || raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let url = Url::parse(raw).ok()?;
    if let Some(override_url) = &config.seller_central_override {
        let origin = override_url.origin().ascii_serialization();
        if url.origin().ascii_serialization() == origin
            && raw.starts_with(&origin)
            && raw[origin.len()..].starts_with(['/', '?'])
            && url.username().is_empty()
            && url.password().is_none()
        {
            return Some(url);
        }
    }
    let authority = raw_authority(raw)?;
    let host = url.host_str()?;
    if url.scheme() != "https"
        || url.port().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || authority != host
    {
        return None;
    }
    let is_central = marketplaces::central_hosts().any(|h| h == host);
    let bare = host.strip_prefix("www.").unwrap_or(host);
    let is_retail = marketplaces::retail_domains().any(|d| d == bare);
    (is_central || is_retail).then_some(url)
}

/// Checks a `return_to` value: a path on sp-broker's own origin (a query is
/// allowed), never another origin.
pub fn validate_return_to(config: &Config, raw: &str) -> Option<String> {
    if !raw.starts_with('/')
        || raw.starts_with("//")
        || raw.len() > 2048
        || raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let base = Url::parse(&config.public_url).ok()?;
    let joined = base.join(raw).ok()?;
    (joined.origin() == base.origin()).then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::Settings;

    fn config(live: bool, override_url: Option<&str>) -> Config {
        let mut s = Settings {
            database_url: "postgres://x".into(),
            listen: "127.0.0.1:8080".into(),
            public_url: "https://broker.example.com".into(),
            app_draft: "false".into(),
            log: "info".into(),
            log_format: "text".into(),
            ..Settings::default()
        };
        if live {
            s.lwa_client_id = Some("amzn1.application-oa2-client.x".into());
            s.lwa_client_secret = Some("s".into());
            s.app_id = Some("amzn1.sp.solution.app".into());
            s.encryption_keys = Some("k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        }
        s.seller_central_url = override_url.map(str::to_owned);
        Config::from_settings(&s).unwrap()
    }

    #[test]
    fn consent_urls_per_marketplace_and_account_type() {
        let live = config(true, None);
        let us = marketplaces::find("ATVPDKIKX0DER").unwrap();
        let de = marketplaces::find("A1PA6795UKMFR9").unwrap();
        assert_eq!(
            consent_url(&live, us, AccountType::Seller, "st"),
            "https://sellercentral.amazon.com/apps/authorize/consent?application_id=amzn1.sp.solution.app&state=st&redirect_uri=https%3A%2F%2Fbroker.example.com%2Foauth%2Famazon%2Fcallback"
        );
        assert!(consent_url(&live, de, AccountType::Seller, "st")
            .starts_with("https://sellercentral-europe.amazon.com/apps/authorize/consent?"));
        assert!(consent_url(&live, de, AccountType::Vendor, "st")
            .starts_with("https://vendorcentral.amazon.de/apps/authorize/consent?"));
        assert!(!consent_url(&live, de, AccountType::Vendor, "st").contains("version=beta"));
    }

    #[test]
    fn good_amazon_callback_uris() {
        let live = config(true, None);
        for good in [
            "https://sellercentral.amazon.com/apps/authorize/confirm/amzn1.sp.solution.x",
            "https://sellercentral-europe.amazon.com/apps/authorize/confirm?x=1",
            "https://vendorcentral.amazon.co.jp/x",
            "https://www.amazon.de/apps/authorize/confirm",
            "https://amazon.com/x",
        ] {
            assert!(
                validate_amazon_callback_uri(&live, good).is_some(),
                "{good}"
            );
        }
    }

    #[test]
    fn hostile_amazon_callback_uris_are_refused() {
        let live = config(true, None);
        for bad in [
            "",
            "//evil.example/x",
            "/apps/authorize/confirm",
            "http://sellercentral.amazon.com/x",
            "https://sellercentral.amazon.com.evil.example/x",
            "https://evil.example/sellercentral.amazon.com",
            "https://sellercentral.amazon.com@evil.example/x",
            "https://x@sellercentral.amazon.com/x",
            "https://sellercentral.amazon.com:8443/x",
            "https://SellerCentral.Amazon.com/x",
            "HTTPS://sellercentral.amazon.com/x",
            "https://sellercentral%2eamazon%2ecom/x",
            "https://sellercentral.amazon.com./x",
            "https:\\\\evil.example",
            "https://sellercentral.amazon.com\\@evil.example",
            "javascript:alert(1)",
            "https://evilamazon.com/x",
            "https://www.sellercentral.evil/x",
            "https://amazon.com.evil.example/",
            "https://wwww.amazon.com/x",
            "https://sellercentral.amazon.com\t.evil/x",
            "data:text/html,hi",
        ] {
            assert!(validate_amazon_callback_uri(&live, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn override_origin_is_accepted_exactly() {
        let c = config(true, Some("http://127.0.0.1:9999/sandbox"));
        assert!(validate_amazon_callback_uri(
            &c,
            "http://127.0.0.1:9999/sandbox/apps/authorize/consent"
        )
        .is_some());
        assert!(validate_amazon_callback_uri(&c, "http://127.0.0.1:9998/sandbox").is_none());
        assert!(validate_amazon_callback_uri(&c, "http://127.0.0.1:9999@evil/x").is_none());
        assert!(validate_amazon_callback_uri(&c, "http://127.0.0.1:99999/x").is_none());
    }

    #[test]
    fn return_to_must_stay_on_our_origin() {
        let c = config(true, None);
        for good in [
            "/settings/connections",
            "/oauth/amazon/login?amazon_state=a&x=%2F",
        ] {
            assert_eq!(validate_return_to(&c, good).as_deref(), Some(good));
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "settings",
            "",
            "/\tx",
            "/%0a//evil",
        ] {
            let result = validate_return_to(&c, bad);
            assert!(result.is_none() || bad == "/%0a//evil", "{bad} accepted");
        }
        // Percent-encoded characters stay a path on our origin.
        assert_eq!(
            validate_return_to(&c, "/%0a//evil").as_deref(),
            Some("/%0a//evil")
        );
    }
}

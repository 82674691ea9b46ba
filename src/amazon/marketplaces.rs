//! Amazon's marketplaces as data, in one place: region, Seller Central and
//! Vendor Central URLs and the regional SP-API endpoint (AMAZON.md).

use crate::domain::text_enum;

text_enum! {
    /// An SP-API region: one authorization covers a seller's marketplaces in one.
    pub enum Region ("region (na, eu or fe)") {
        Na => "na",
        Eu => "eu",
        Fe => "fe",
    }
}

impl Region {
    /// A name for people.
    pub fn label(self) -> &'static str {
        match self {
            Region::Na => "North America",
            Region::Eu => "Europe",
            Region::Fe => "Far East",
        }
    }

    /// Amazon's production SP-API endpoint for the region.
    pub fn spapi_endpoint(self) -> &'static str {
        match self {
            Region::Na => "https://sellingpartnerapi-na.amazon.com",
            Region::Eu => "https://sellingpartnerapi-eu.amazon.com",
            Region::Fe => "https://sellingpartnerapi-fe.amazon.com",
        }
    }
}

text_enum! {
    /// Seller Central or Vendor Central.
    pub enum AccountType ("account type (seller or vendor)") {
        Seller => "seller",
        Vendor => "vendor",
    }
}

impl AccountType {
    /// A name for people.
    pub fn label(self) -> &'static str {
        match self {
            AccountType::Seller => "Seller",
            AccountType::Vendor => "Vendor",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marketplace {
    pub id: &'static str,
    pub country: &'static str,
    pub region: Region,
    pub seller_central: &'static str,
    pub vendor_central: &'static str,
}

impl Marketplace {
    pub fn central_url(&self, account_type: AccountType) -> &'static str {
        match account_type {
            AccountType::Seller => self.seller_central,
            AccountType::Vendor => self.vendor_central,
        }
    }
}

const fn m(
    country: &'static str,
    id: &'static str,
    region: Region,
    seller_central: &'static str,
    vendor_central: &'static str,
) -> Marketplace {
    Marketplace {
        id,
        country,
        region,
        seller_central,
        vendor_central,
    }
}

use Region::{Eu, Fe, Na};

/// Every marketplace of AMAZON.md, in its order (grouped by region).
pub const MARKETPLACES: &[Marketplace] = &[
    m(
        "Canada",
        "A2EUQ1WTGCTBG2",
        Na,
        "https://sellercentral.amazon.ca",
        "https://vendorcentral.amazon.ca",
    ),
    m(
        "United States",
        "ATVPDKIKX0DER",
        Na,
        "https://sellercentral.amazon.com",
        "https://vendorcentral.amazon.com",
    ),
    m(
        "Mexico",
        "A1AM78C64UM0Y8",
        Na,
        "https://sellercentral.amazon.com.mx",
        "https://vendorcentral.amazon.com.mx",
    ),
    m(
        "Brazil",
        "A2Q3Y263D00KWC",
        Na,
        "https://sellercentral.amazon.com.br",
        "https://vendorcentral.amazon.com.br",
    ),
    m(
        "Ireland",
        "A28R8C7NBKEWEA",
        Eu,
        "https://sellercentral.amazon.ie",
        "https://vendorcentral.amazon.ie",
    ),
    m(
        "Spain",
        "A1RKKUPIHCS9HS",
        Eu,
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.es",
    ),
    m(
        "United Kingdom",
        "A1F83G8C2ARO7P",
        Eu,
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.co.uk",
    ),
    m(
        "France",
        "A13V1IB3VIYZZH",
        Eu,
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.fr",
    ),
    m(
        "Belgium",
        "AMEN7PMS3EDWL",
        Eu,
        "https://sellercentral.amazon.com.be",
        "https://vendorcentral.amazon.com.be",
    ),
    m(
        "Netherlands",
        "A1805IZSGTT6HS",
        Eu,
        "https://sellercentral.amazon.nl",
        "https://vendorcentral.amazon.nl",
    ),
    m(
        "Germany",
        "A1PA6795UKMFR9",
        Eu,
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.de",
    ),
    m(
        "Italy",
        "APJ6JRA9NG5V4",
        Eu,
        "https://sellercentral-europe.amazon.com",
        "https://vendorcentral.amazon.it",
    ),
    m(
        "Sweden",
        "A2NODRKZP88ZB9",
        Eu,
        "https://sellercentral.amazon.se",
        "https://vendorcentral.amazon.se",
    ),
    m(
        "South Africa",
        "AE08WJ6YKNBMC",
        Eu,
        "https://sellercentral.amazon.co.za",
        "https://vendorcentral.amazon.co.za",
    ),
    m(
        "Poland",
        "A1C3SOZRARQ6R3",
        Eu,
        "https://sellercentral.amazon.pl",
        "https://vendorcentral.amazon.pl",
    ),
    m(
        "Egypt",
        "ARBP9OOSHTCHU",
        Eu,
        "https://sellercentral.amazon.eg",
        "https://vendorcentral.amazon.me",
    ),
    m(
        "Turkey",
        "A33AVAJ2PDY3EV",
        Eu,
        "https://sellercentral.amazon.com.tr",
        "https://vendorcentral.amazon.com.tr",
    ),
    m(
        "Saudi Arabia",
        "A17E79C6D8DWNP",
        Eu,
        "https://sellercentral.amazon.sa",
        "https://vendorcentral.amazon.me",
    ),
    m(
        "United Arab Emirates",
        "A2VIGQ35RCS4UG",
        Eu,
        "https://sellercentral.amazon.ae",
        "https://vendorcentral.amazon.me",
    ),
    m(
        "India",
        "A21TJRUUN4KGV",
        Eu,
        "https://sellercentral.amazon.in",
        "https://vendorcentral.amazon.in",
    ),
    m(
        "Singapore",
        "A19VAU5U5O7RUS",
        Fe,
        "https://sellercentral.amazon.sg",
        "https://vendorcentral.amazon.com.sg",
    ),
    m(
        "Australia",
        "A39IBJ37TRP1C6",
        Fe,
        "https://sellercentral.amazon.com.au",
        "https://vendorcentral.amazon.com.au",
    ),
    m(
        "Japan",
        "A1VC38T7YXB528",
        Fe,
        "https://sellercentral.amazon.co.jp",
        "https://vendorcentral.amazon.co.jp",
    ),
];

pub fn find(id: &str) -> Option<&'static Marketplace> {
    MARKETPLACES.iter().find(|m| m.id == id)
}

/// The marketplace a newcomer most likely wants.
pub const DEFAULT_MARKETPLACE_ID: &str = "ATVPDKIKX0DER";

/// Every host of a Seller or Vendor Central URL in the table.
pub fn central_hosts() -> impl Iterator<Item = &'static str> {
    MARKETPLACES
        .iter()
        .flat_map(|m| [m.seller_central, m.vendor_central])
        .filter_map(|url| url.strip_prefix("https://"))
}

/// Retail domains (`amazon.com`, `amazon.de`, …), derived from the Seller Central
/// hosts of the table plus the retail domains of the marketplaces served by the
/// shared European Seller Central.
pub fn retail_domains() -> impl Iterator<Item = &'static str> {
    const RETAIL: &[&str] = &[
        "amazon.ca",
        "amazon.com",
        "amazon.com.mx",
        "amazon.com.br",
        "amazon.ie",
        "amazon.es",
        "amazon.co.uk",
        "amazon.fr",
        "amazon.com.be",
        "amazon.nl",
        "amazon.de",
        "amazon.it",
        "amazon.se",
        "amazon.co.za",
        "amazon.pl",
        "amazon.eg",
        "amazon.com.tr",
        "amazon.sa",
        "amazon.ae",
        "amazon.in",
        "amazon.sg",
        "amazon.com.au",
        "amazon.co.jp",
    ];
    RETAIL.iter().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_row_is_consistent() {
        let mut ids = HashSet::new();
        for m in MARKETPLACES {
            assert!(ids.insert(m.id), "{} twice", m.id);
            assert!(m.id.len() >= 13 && m.id.chars().all(|c| c.is_ascii_alphanumeric()));
            for url in [m.seller_central, m.vendor_central] {
                let host = url.strip_prefix("https://").unwrap_or_default();
                assert!(!host.is_empty() && !host.contains('/'), "{url}");
                assert!(host.contains(".amazon."), "{url}");
            }
            // The endpoint is the one of the marketplace's region.
            assert!(m
                .region
                .spapi_endpoint()
                .ends_with(&format!("-{}.amazon.com", m.region.as_str())));
        }
        assert_eq!(MARKETPLACES.len(), 23);
        assert_eq!(find("A1PA6795UKMFR9").map(|m| m.region), Some(Region::Eu));
        assert_eq!(find("A1VC38T7YXB528").map(|m| m.region), Some(Region::Fe));
        assert_eq!(find("ATVPDKIKX0DER").map(|m| m.region), Some(Region::Na));
        assert!(find(DEFAULT_MARKETPLACE_ID).is_some());
        // Regions are contiguous in the table so the form can group them.
        let regions: Vec<Region> = MARKETPLACES.iter().map(|m| m.region).collect();
        let mut seen = Vec::new();
        for r in regions {
            if seen.last() != Some(&r) {
                assert!(!seen.contains(&r), "region {r} is split in the table");
                seen.push(r);
            }
        }
    }

    #[test]
    fn every_retail_domain_belongs_to_a_marketplace_country() {
        assert_eq!(retail_domains().count(), MARKETPLACES.len());
    }
}

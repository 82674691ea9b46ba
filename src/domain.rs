//! The product's words as types: a connection's status and health, and the
//! macro that gives every such word exactly one spelling, the contract's.
//! Region and account type are Amazon's words and live in
//! `amazon::marketplaces`, built with the same macro.
//!
//! Each enum converts to and from its string in one place (`as_str` /
//! `FromStr`), and that one conversion serves JSON (serde), PostgreSQL (sqlx,
//! stored as `text`), the OpenAPI document (utoipa) and the pages.

/// A string that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

/// Declares a `Copy` enum whose variants each have one contract spelling, with
/// `as_str`, `ALL`, `FromStr`, `Display`, serde, sqlx (`text`) and utoipa.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::domain::UnknownValue {
                        what: $what,
                        value: other.chars().take(64).collect(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use text_enum;

text_enum! {
    /// Where a connection stands (CONTRACT §5).
    pub enum ConnectionStatus ("connection status (active, needs_reauth or disconnected)") {
        Active => "active",
        /// Amazon said `invalid_grant`: revoked or expired.
        NeedsReauth => "needs_reauth",
        /// Erased on request.
        Disconnected => "disconnected",
    }
}

text_enum! {
    /// How a connection is doing (CONTRACT §5). Computed in one place only,
    /// the SQL function `connection_health` (migrations), so that the API, the
    /// pages, the counts and the filters cannot disagree.
    pub enum Health ("health (ok, degraded, expiring or failing)") {
        Ok => "ok",
        /// The last refresh failed for a passing reason, or verification failed.
        Degraded => "degraded",
        /// The authorization ends within 30 days.
        Expiring => "expiring",
        /// needs_reauth.
        Failing => "failing",
    }
}

text_enum! {
    /// What an event announces (CONTRACT §8).
    pub enum EventType ("event type") {
        ConnectionConnected => "connection.connected",
        ConnectionReconnected => "connection.reconnected",
        ConnectionNeedsReauth => "connection.needs_reauth",
        ConnectionDegraded => "connection.degraded",
        ConnectionRecovered => "connection.recovered",
        ConnectionExpiring => "connection.expiring",
        ConnectionDisconnected => "connection.disconnected",
        AppCredentialsRejected => "app.credentials_rejected",
        AppCredentialsRecovered => "app.credentials_recovered",
        AppSecretExpiring => "app.secret_expiring",
    }
}

/// Amazon asks sellers to re-authorize public apps every 365 days: a
/// connection's `authorization_expires_at` is its `authorized_at` plus this.
/// (When it counts as `expiring` is the health rule's, in SQL.)
pub const AUTHORIZATION_LIFETIME: time::Duration = time::Duration::days(365);

/// Refuses text that must not reach PostgreSQL or a page as it is: NUL and
/// other control characters, leading or trailing space only, or too long.
/// The one check behind every name, user id and email the API and the CLI
/// take (CONTRACT §10).
pub fn check_text(value: &str, max_chars: usize) -> Result<&str, TextProblem> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(TextProblem::Empty);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(TextProblem::ControlCharacter);
    }
    if trimmed.chars().count() > max_chars {
        return Err(TextProblem::TooLong { max_chars });
    }
    Ok(trimmed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextProblem {
    #[error("must not be empty")]
    Empty,
    #[error("must not contain NUL or other control characters")]
    ControlCharacter,
    #[error("must be at most {max_chars} characters")]
    TooLong { max_chars: usize },
}

/// A field a business operation refused, named as the API names it (the CLI
/// maps it to its flag). One type, so the API and the CLI refuse the same
/// things with the same words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        InvalidInput {
            field,
            problem: problem.into(),
        }
    }

    pub fn text(field: &'static str, problem: TextProblem) -> Self {
        InvalidInput::new(field, problem.to_string())
    }
}

/// [`check_text`] for a named field.
pub fn text_field<'a>(
    field: &'static str,
    value: &'a str,
    max_chars: usize,
) -> Result<&'a str, InvalidInput> {
    check_text(value, max_chars).map_err(|p| InvalidInput::text(field, p))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_word_round_trips_through_its_one_spelling() {
        for status in ConnectionStatus::ALL {
            assert_eq!(status.as_str().parse::<ConnectionStatus>(), Ok(*status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        for health in Health::ALL {
            let json = serde_json::to_string(health).unwrap();
            assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), *health);
        }
        let unknown = "Active".parse::<ConnectionStatus>().unwrap_err();
        assert_eq!(unknown.value, "Active");
    }

    #[test]
    fn text_checks_refuse_control_characters_and_length() {
        assert_eq!(check_text("  Acme  ", 10), Ok("Acme"));
        assert_eq!(check_text("a\0b", 10), Err(TextProblem::ControlCharacter));
        assert_eq!(
            check_text("a\u{7}b", 10),
            Err(TextProblem::ControlCharacter)
        );
        assert_eq!(check_text("a\nb", 10), Err(TextProblem::ControlCharacter));
        assert_eq!(check_text("   ", 10), Err(TextProblem::Empty));
        assert_eq!(
            check_text(&"é".repeat(11), 10),
            Err(TextProblem::TooLong { max_chars: 10 })
        );
        assert!(check_text(&"é".repeat(10), 10).is_ok());
    }
}

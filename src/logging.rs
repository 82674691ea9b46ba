//! Log set-up: `SP_BROKER_LOG` is the filter, `SP_BROKER_LOG_FORMAT=json` for JSON
//! lines, always on stderr. What is logged is decided where it is logged: no
//! token, code, state, secret, API key or session id is ever a field.

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("SP_BROKER_LOG: `{0}` is not a valid tracing filter")]
pub struct BadFilter(String);

pub fn init(filter: &str, json: bool) -> Result<(), BadFilter> {
    let env_filter = EnvFilter::try_new(filter).map_err(|_| BadFilter(filter.to_owned()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

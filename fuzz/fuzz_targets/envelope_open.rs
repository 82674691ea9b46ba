//! The envelope decoder (`KeyRing::open`): whatever bytes a row holds, opening
//! them answers an error or the plaintext sealed there, never panics; a value
//! sealed here opens only in its own context and not after any one byte changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use sp_broker::crypto::{KeyRing, Purpose, SealContext};
use std::sync::LazyLock;

static RING: LazyLock<KeyRing> = LazyLock::new(|| {
    let spec = "new:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,\
                old:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    match KeyRing::parse(&SecretString::from(spec.to_owned())) {
        Ok(ring) => ring,
        Err(error) => panic!("the fuzz key ring does not parse: {error}"),
    }
});

const HERE: SealContext<'static> = SealContext {
    purpose: Purpose::RefreshToken,
    tenant: "6f1c1d7e-0000-4000-8000-000000000001",
    row: "6f1c1d7e-0000-4000-8000-000000000002",
};
const ELSEWHERE: SealContext<'static> = SealContext {
    purpose: Purpose::RefreshToken,
    tenant: "6f1c1d7e-0000-4000-8000-000000000001",
    row: "6f1c1d7e-0000-4000-8000-000000000003",
};

fuzz_target!(|data: &[u8]| {
    // Anything as an envelope: an error, or (only for bytes sealed with these
    // keys, which random input does not find) a plaintext.
    if let Ok(plaintext) = RING.open(HERE, data) {
        assert_eq!(RING.seal(HERE, &plaintext).len(), data.len());
    }

    // Anything as a plaintext: it comes back, only where it was sealed.
    let sealed = RING.seal(HERE, data);
    assert_eq!(RING.open(HERE, &sealed).as_deref(), Ok(data));
    assert!(RING.open(ELSEWHERE, &sealed).is_err());
    if !data.is_empty() {
        let position = data[0] as usize % sealed.len();
        let mut tampered = sealed.clone();
        tampered[position] ^= 1 << (data.len() % 8);
        assert!(RING.open(HERE, &tampered).is_err());
        assert!(RING.open(HERE, &sealed[..position]).is_err());
    }
});

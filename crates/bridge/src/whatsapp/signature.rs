//! `X-Hub-Signature-256` webhook signatures: HMAC-SHA256 of the raw body with the app secret.
//!
//! The HMAC runs over the bytes exactly as received. Meta signs its wire form, in which non-ASCII
//! text is `\uXXXX`-escaped, so parsing and re-serialising first would reject genuine deliveries
//! that carry accented or non-Latin names (spec §3.2, vector B in §12.6).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the header carrying the signature (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Prefix of the header value in front of the hex digest.
const PREFIX: &str = "sha256=";

/// Length of a SHA-256 digest in bytes.
const DIGEST_LEN: usize = 32;

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("the X-Hub-Signature-256 header is not \"sha256=\" followed by 64 hex digits")]
    Malformed,
    #[error("the X-Hub-Signature-256 header does not match the request body")]
    Mismatch,
}

fn mac(app_secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// `"sha256="` + lowercase hex HMAC-SHA256(app_secret, body): the header value Meta would send.
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let digest = mac(app_secret, body).finalize().into_bytes();
    format!("{PREFIX}{}", hex::encode(digest))
}

/// Constant-time check over the raw body bytes; header hex may be upper or lower case.
pub fn verify(app_secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_digest = header
        .get(..PREFIX.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(PREFIX))
        .map(|_| &header[PREFIX.len()..])
        .ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != DIGEST_LEN {
        return Err(SignatureError::Malformed);
    }
    // `verify_slice` compares in constant time.
    mac(app_secret, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test_app_secret";

    const VECTOR_A: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"106540352242922"},"calls":[{"id":"wacid.TEST-SIGNATURE-VECTOR","from":"447700900123","to":"15550001111","event":"terminate","timestamp":"1760681533","direction":"USER_INITIATED","status":"COMPLETED","start_time":"1760681513","end_time":"1760681533","duration":20}]},"field":"calls"}]}]}"#;
    const VECTOR_A_SIG: &str =
        "sha256=d0e3678273139b3a48f0f72077680fb15c8df9a379b319397f197af8b2ade2b0";

    const VECTOR_B: &str = r#"{"name":"Jos\u00e9"}"#;
    const VECTOR_B_SIG: &str =
        "sha256=8fc1b281882858db90f334faa0949dec35aec61014d90994cdf59bfa52e7c7e6";
    const VECTOR_B_REENCODED_SIG: &str =
        "sha256=e6d8fbc7b3e6d5136d7e593e7227461113b558575647f2084728ecac6fc09f96";

    #[test]
    fn vector_a_signs_and_verifies() {
        assert_eq!(VECTOR_A.len(), 477);
        assert_eq!(sign(SECRET, VECTOR_A.as_bytes()), VECTOR_A_SIG);
        assert_eq!(
            verify(SECRET, VECTOR_A.as_bytes(), Some(VECTOR_A_SIG)),
            Ok(())
        );
    }

    #[test]
    fn upper_case_hex_is_accepted() {
        let upper = format!("sha256={}", VECTOR_A_SIG["sha256=".len()..].to_uppercase());
        assert_eq!(verify(SECRET, VECTOR_A.as_bytes(), Some(&upper)), Ok(()));
    }

    #[test]
    fn vector_b_verifies_over_the_escaped_wire_bytes() {
        assert_eq!(VECTOR_B.len(), 20);
        assert_eq!(sign(SECRET, VECTOR_B.as_bytes()), VECTOR_B_SIG);
        assert_eq!(
            verify(SECRET, VECTOR_B.as_bytes(), Some(VECTOR_B_SIG)),
            Ok(())
        );
    }

    #[test]
    fn re_serialised_vector_b_does_not_match_metas_signature() {
        let value: serde_json::Value = serde_json::from_str(VECTOR_B).unwrap();
        let reencoded = serde_json::to_string(&value).unwrap();
        assert_eq!(reencoded, "{\"name\":\"José\"}");
        assert_eq!(sign(SECRET, reencoded.as_bytes()), VECTOR_B_REENCODED_SIG);
        assert_eq!(
            verify(SECRET, reencoded.as_bytes(), Some(VECTOR_B_SIG)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn flipping_any_body_byte_fails() {
        let body = VECTOR_A.as_bytes();
        for index in [0, 100, body.len() - 1] {
            let mut flipped = body.to_vec();
            flipped[index] ^= 0x01;
            assert_eq!(
                verify(SECRET, &flipped, Some(VECTOR_A_SIG)),
                Err(SignatureError::Mismatch),
                "byte {index}"
            );
        }
    }

    #[test]
    fn flipping_a_secret_byte_fails() {
        assert_eq!(
            verify(b"test_app_secreu", VECTOR_A.as_bytes(), Some(VECTOR_A_SIG)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_header_is_refused() {
        assert_eq!(
            verify(SECRET, VECTOR_A.as_bytes(), None),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let digest = &VECTOR_A_SIG["sha256=".len()..];
        for header in [
            "",
            digest,
            "sha1=0123",
            "sha256=",
            "sha256=xyz",
            "sha256=abcd",
            &format!("sha256={digest}00"),
            &format!("sha256={}", &digest[1..]),
            "sha256=é",
        ] {
            assert_eq!(
                verify(SECRET, VECTOR_A.as_bytes(), Some(header)),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }
}

//! Per-boot tokens: random secrets handed to one boot on its kernel command line.
//!
//! Only their SHA-256 is stored, so a database dump cannot impersonate a node.

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct TokenError(String);

/// A fresh 256-bit token, hex-encoded (safe on a kernel command line).
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, b) = (super::generate().unwrap(), super::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(super::hash(&a), super::hash(&a));
        assert_ne!(super::hash(&a), a);
    }
}

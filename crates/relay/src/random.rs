//! Random bytes for SCRAM nonces and salts and for cancel keys, from the operating system (through
//! the TLS library's provider, which the relay links anyway).

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), std::io::Error> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| std::io::Error::other("the operating system's random source failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_different_bytes() {
        let (mut a, mut b) = ([0u8; 18], [0u8; 18]);
        super::random_bytes(&mut a).unwrap();
        super::random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }
}

//! The CSRF token of the pages' forms: random per process, compared in constant time. The
//! pages' cookie is `SameSite=Strict` as well; the token guards a browser that ignores it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::UiError;

pub struct CsrfToken(String);

impl CsrfToken {
    /// 256 bits from the TLS library's CSPRNG; if it fails (it does not on a working
    /// system), the time and address space layout, hashed, which still differ per process.
    pub fn generate() -> CsrfToken {
        let mut random = [0u8; 32];
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if provider.secure_random.fill(&mut random).is_err() {
            tracing::warn!("no secure random source; the CSRF token is derived from the time");
            let mut hasher = Sha256::new();
            hasher.update(format!("{:?}{:p}", std::time::SystemTime::now(), &random));
            random = hasher.finalize().into();
        }
        CsrfToken(random.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    pub fn value(&self) -> &str {
        &self.0
    }

    pub fn check(&self, presented: &str) -> Result<(), UiError> {
        match bool::from(presented.as_bytes().ct_eq(self.0.as_bytes())) {
            true => Ok(()),
            false => Err(UiError::Csrf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issued_token_passes() {
        let token = CsrfToken::generate();
        assert!(token.check(token.value()).is_ok());
        assert!(token.check("").is_err());
        assert!(token.check(CsrfToken::generate().value()).is_err());
    }
}

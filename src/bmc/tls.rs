//! TLS to BMCs. Most BMCs serve a self-signed certificate, so a node's BMC can
//! pin its certificate by SHA-256 fingerprint (`bmc.fingerprint`), as ssh pins a
//! host key; an unpinned BMC must present a certificate the web PKI trusts for its
//! name. Either way a refusal says the fingerprint the BMC presented, so an
//! operator can check it against the BMC's console and pin it.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A fingerprint as operators write it: 64 hex digits, colons allowed.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex.to_ascii_lowercase()).ok()?;
    bytes.try_into().ok()
}

/// How a fingerprint is shown: lowercase hex pairs joined by colons.
pub fn show_fingerprint(fp: &[u8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Accepts the pinned certificate, or (with no pin) one the web PKI trusts.
#[derive(Debug)]
struct BmcVerifier {
    pin: Option<[u8; 32]>,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BmcVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        match self.pin {
            Some(pin) if pin == presented => Ok(ServerCertVerified::assertion()),
            Some(pin) => Err(rustls::Error::General(format!(
                "its certificate's SHA-256 fingerprint is {}, not the pinned {}: a different certificate \
                 (replaced, or someone in between); check it on the BMC before pinning it again",
                show_fingerprint(&presented),
                show_fingerprint(&pin)
            ))),
            None => self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| {
                rustls::Error::General(format!(
                    "its certificate is not trusted ({e}); its SHA-256 fingerprint is {}: once checked on the \
                     BMC, pin it with the node's bmc.fingerprint",
                    show_fingerprint(&presented)
                ))
            }),
        }
    }

    // The handshake's signatures are checked whatever the trust decision.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for one BMC: its pin, if any.
pub fn client_config(pin: Option<[u8; 32]>) -> Result<Arc<rustls::ClientConfig>, String> {
    // ring, as ureq's own rustls uses: the post-quantum key exchange it lacks needs
    // aws-lc-rs (a cmake build), and no BMC offers it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    let webpki =
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| e.to_string())?;
    let verifier = Arc::new(BmcVerifier { pin, webpki, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_show_with_them() {
        let hex = "AB".repeat(32);
        let fp = parse_fingerprint(&hex).unwrap();
        assert_eq!(fp, [0xab; 32]);
        let shown = show_fingerprint(&fp);
        assert_eq!(parse_fingerprint(&shown), Some(fp));
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint("ab:cd"), None, "too short");
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn a_config_builds_with_and_without_a_pin() {
        assert!(client_config(None).is_ok());
        assert!(client_config(Some([1; 32])).is_ok());
    }
}

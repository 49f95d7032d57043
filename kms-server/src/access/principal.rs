//! Who is calling: the principal named by the verified client certificate.
//!
//! The name is the certificate's first URI SAN (e.g. a SPIFFE id) if it has one, else its
//! first DNS SAN, else its subject CN. The certificate was verified against the client CA (and
//! CRL) during the TLS handshake, before any request was read.

use tonic::Request;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::KmsError;

/// The authenticated caller. `Debug` never shows the TOTP code.
#[derive(Clone)]
pub struct Principal {
    pub name: String,
    /// The peer's socket address, for audit and rate limiting.
    pub peer: String,
    /// The TOTP code sent with the request (`x-kms-totp`), for rules that require MFA.
    pub totp: Option<String>,
    /// Where the access check notes the key for the audit record.
    pub audit: crate::call::AuditSlot,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("peer", &self.peer)
            .field("totp", &self.totp.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Principal {
    /// The peer's IP address, if known.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }
}

/// Extracts the principal from a request that came over the mTLS listener.
pub fn of<T>(req: &Request<T>) -> Result<Principal, KmsError> {
    let info = req
        .extensions()
        .get::<crate::call::Peer>()
        .ok_or_else(|| KmsError::Internal("request without TLS connection info".into()))?;
    let name = info.principal.as_deref().ok_or_else(|| {
        KmsError::invalid(
            "the client certificate has no URI SAN, DNS SAN or subject CN to name its principal",
        )
    })?;
    let totp = req
        .metadata()
        .get(crate::access::mfa::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(Principal {
        name: name.to_string(),
        peer: info.addr_text.to_string(),
        totp,
        audit: req
            .extensions()
            .get::<crate::call::AuditSlot>()
            .cloned()
            .unwrap_or_default(),
    })
}

/// The principal name of a DER certificate: URI SAN, else DNS SAN, else subject CN.
pub fn name_of(der: &[u8]) -> Result<String, KmsError> {
    let unnamed = || {
        KmsError::invalid(
            "the client certificate has no URI SAN, DNS SAN or subject CN to name its principal",
        )
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| unnamed())?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        if let Some(name) = uri.or(dns) {
            return Ok(name);
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or_else(unnamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn uri_then_dns_then_cn() {
        let uri = rcgen::SanType::URI("spiffe://kms.test/a".try_into().unwrap());
        let dns = rcgen::SanType::DnsName("svc.example".try_into().unwrap());
        assert_eq!(
            name_of(&cert(vec![dns.clone(), uri], Some("cn"))).unwrap(),
            "spiffe://kms.test/a"
        );
        assert_eq!(
            name_of(&cert(vec![dns], Some("cn"))).unwrap(),
            "svc.example"
        );
        assert_eq!(name_of(&cert(vec![], Some("cn"))).unwrap(), "cn");
        assert!(name_of(&cert(vec![], None)).is_err());
        assert!(name_of(b"not a certificate").is_err());
    }

    #[test]
    fn debug_hides_the_totp_code() {
        let p = Principal {
            name: "n".into(),
            peer: "127.0.0.1:1".into(),
            totp: Some("493817".into()),
            audit: Default::default(),
        };
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("493817") && shown.contains("redacted"),
            "{shown}"
        );
    }
}

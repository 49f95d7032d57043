//! Generation of a small PKI (a CA, a server certificate, client certificates) for dev mode
//! and tests. Production deployments bring their own certificates.

use std::path::{Path, PathBuf};

use crate::storage::write_file;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Paths of a generated certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client identity to issue: file stem, subject CN and URI SAN (e.g. a SPIFFE id).
pub struct ClientSpec<'a> {
    pub name: &'a str,
    pub common_name: &'a str,
    pub uri: &'a str,
}

/// Writes `ca.pem`, `server.pem`/`server-key.pem` (SANs `server_names`, DNS names or IP
/// addresses) and `<name>.pem`/`<name>-key.pem` for each client into `dir`. Keys are written
/// with mode 0600. The CA's private key is not kept: nothing more can be issued later.
pub fn generate(
    dir: &Path,
    server_names: &[&str],
    clients: &[ClientSpec<'_>],
) -> Result<(), String> {
    generate_with_crl(dir, server_names, clients, &[])
}

/// Like [`generate`], and also writes `crl.pem`, a CRL signed by the CA that revokes the
/// clients named in `revoked` (by their `name`), when `revoked` is not empty.
pub fn generate_with_crl(
    dir: &Path,
    server_names: &[&str],
    clients: &[ClientSpec<'_>],
    revoked: &[&str],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "KMS development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
    let mut server = CertificateParams::new(names).map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kms-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(err)?;
    let cert = server.signed_by(&key, &issuer).map_err(err)?;
    write_pair(dir, "server", &cert.pem(), &key.serialize_pem())?;

    let mut revoked_certs = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let serial = rcgen::SerialNumber::from(i as u64 + 1000);
        p.serial_number = Some(serial.clone());
        if revoked.contains(&c.name) {
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: serial,
                revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        p.distinguished_name.push(DnType::CommonName, c.common_name);
        p.subject_alt_names
            .push(SanType::URI(c.uri.try_into().map_err(err)?));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        write_pair(dir, c.name, &cert.pem(), &key.serialize_pem())?;
    }
    if !revoked.is_empty() {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .map_err(err)?;
        write_file(
            &dir.join("crl.pem"),
            crl.pem().map_err(err)?.as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// The files `generate` wrote for `name`.
pub fn files(dir: &Path, name: &str) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> Result<(), String> {
    let f = files(dir, name);
    write_file(&f.cert, cert.as_bytes(), 0o644)?;
    write_file(&f.key, key.as_bytes(), 0o600)
}

//! TLS for the streaming server (`enable_tls_streaming`): the configured PEM pair
//! (`[x509_key_pair_streaming] tls_cert_file` / `tls_key_file`, containerd's names), or a
//! self-signed one made at start (P-256, one year, the listen address and `localhost` as
//! names) when none is given, kept in memory only.

use std::net::IpAddr;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

use crate::cri::stream_front::StreamingError;

fn tls_err(what: &str, e: impl std::fmt::Display) -> StreamingError {
    StreamingError::Tls {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// A self-signed certificate and its PKCS#8 key, both PEM.
pub fn self_signed(ip: IpAddr) -> Result<(Vec<u8>, Vec<u8>), StreamingError> {
    let e = |e: openssl::error::ErrorStack| tls_err("self-signed certificate", e);
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(e)?;
    let key = PKey::from_ec_key(EcKey::generate(&group).map_err(e)?).map_err(e)?;
    let mut name = X509NameBuilder::new().map_err(e)?;
    name.append_entry_by_nid(Nid::COMMONNAME, "taskd-streaming")
        .map_err(e)?;
    let name = name.build();
    let mut b = X509::builder().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let mut serial = BigNum::new().map_err(e)?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(e)?;
    let serial = serial.to_asn1_integer().map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    b.set_subject_name(&name).map_err(e)?;
    b.set_issuer_name(&name).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let (from, until) = (
        Asn1Time::days_from_now(0).map_err(e)?,
        Asn1Time::days_from_now(365).map_err(e)?,
    );
    b.set_not_before(&from).map_err(e)?;
    b.set_not_after(&until).map_err(e)?;
    let san = SubjectAlternativeName::new()
        .ip(&ip.to_string())
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .map_err(e)?;
    b.append_extension(san).map_err(e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e)?;
    let cert = b.build().to_pem().map_err(e)?;
    let key = key.private_key_to_pem_pkcs8().map_err(e)?;
    Ok((cert, key))
}

/// The acceptor for the configured pair, or a self-signed one when both paths are empty.
pub fn acceptor(
    cert_file: &str,
    key_file: &str,
    ip: IpAddr,
) -> Result<tokio_native_tls::TlsAcceptor, StreamingError> {
    let (cert, key) = match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => self_signed(ip)?,
        (false, false) => (
            std::fs::read(cert_file).map_err(|e| tls_err(&format!("read tls_cert_file {cert_file}"), e))?,
            std::fs::read(key_file).map_err(|e| tls_err(&format!("read tls_key_file {key_file}"), e))?,
        ),
        _ => {
            return Err(tls_err(
                "x509_key_pair_streaming",
                "tls_cert_file and tls_key_file go together (or neither, for a self-signed pair)",
            ));
        }
    };
    // native-tls takes PKCS#8 keys; a traditional (PKCS#1 / SEC1) PEM key is converted.
    let key = PKey::private_key_from_pem(&key)
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .map_err(|e| tls_err(&format!("private key {key_file}"), e))?;
    let identity = native_tls::Identity::from_pkcs8(&cert, &key)
        .map_err(|e| tls_err(&format!("certificate {cert_file}"), e))?;
    let acceptor = native_tls::TlsAcceptor::new(identity).map_err(|e| tls_err("TLS acceptor", e))?;
    Ok(tokio_native_tls::TlsAcceptor::from(acceptor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_makes_an_acceptor() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (cert, key) = self_signed(ip).unwrap();
        let x = X509::from_pem(&cert).unwrap();
        assert!(
            x.subject_alt_names()
                .unwrap()
                .iter()
                .any(|n| n.dnsname() == Some("localhost"))
        );
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        acceptor(c.to_str().unwrap(), k.to_str().unwrap(), ip).unwrap();
        acceptor("", "", ip).unwrap();
        assert!(acceptor(c.to_str().unwrap(), "", ip).is_err());
        assert!(acceptor("/nonexistent/c.pem", "/nonexistent/k.pem", ip).is_err());
    }
}

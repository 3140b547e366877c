//! HTTPS with a test CA made by rcgen: a client that trusts the CA gets
//! through, one that does not is refused.

use crate::support::*;

#[tokio::test]
async fn https_with_a_verified_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |o| o.tls = Some((cert_path, key_path))).await;
    assert!(s.url.starts_with("https://"));
    let url = format!("https://localhost:{}/api/v1/ping", s.addr.port());
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let res = loop {
        match trusting.get(&url).send().await {
            Ok(r) => break r,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        res.headers()
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("max-age=31536000".to_string()),
        "under TLS, HSTS"
    );
    assert_eq!(res.text().await.unwrap(), "PONG\n");
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let err = untrusting.get(&url).send().await.unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
}

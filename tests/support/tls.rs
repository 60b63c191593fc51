//! TLS for the suite: a certificate generated per test (its own CA) and a TLS front that
//! terminates TLS and forwards each connection to a plaintext listener, as the listener of a
//! managed Kafka would (tansu itself speaks plaintext only).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
pub struct Cert {
    /// The certificate (also the CA clients trust).
    pub cert_pem: PathBuf,
    /// Its private key.
    pub key_pem: PathBuf,
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Cert {
    /// Generate one and write its PEM files into `dir`.
    pub fn generate(dir: &Path) -> Cert {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("certificate generated");
        let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_pem, ck.cert.pem()).expect("cert written");
        std::fs::write(&key_pem, ck.key_pair.serialize_pem()).expect("key written");
        Cert {
            cert_pem,
            key_pem,
            der: ck.cert.der().clone(),
            key: ck.key_pair.serialize_der(),
        }
    }

    /// A rustls server configuration serving this certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        // ring's provider (deprecated for lacking post-quantum key exchange): enough for a
        // test front, and no second crypto library to build
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .expect("server certificate");
        Arc::new(cfg)
    }
}

/// A TLS front on its own port forwarding to `upstream`; stops with the test process.
pub struct Front {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Its port.
    pub port: u16,
}

impl Front {
    /// Listen on `port` (TLS with `cert`) and forward every connection to `upstream`.
    pub fn start(port: u16, cert: &Cert, upstream: String) -> Front {
        let acceptor = TlsAcceptor::from(cert.server_config());
        let std_listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("TLS front binds");
        std_listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return; // a client that does not speak TLS: dropped
                        };
                        let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let _ = copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            });
        });
        Front {
            addr: format!("127.0.0.1:{port}"),
            port,
        }
    }
}

//! The CPU of sidecar-to-sidecar mTLS (issue 14), with the sidecars' own
//! TLS configurations and certificates from the control plane's CA code,
//! in memory: the two ends hand their records to each other, no socket, so
//! the figures are the computation alone, apart from what the network and
//! the scheduler add in the `mesh` bench.
//!
//! - `mtls-handshake/{full,resumed}`: one handshake, both ends;
//! - `mtls-records/32KiB-*`: 32 KiB of application data one way, encrypted
//!   by one end and decrypted by the other (the suite the sidecars agree on);
//! - `aead/*`: sealing and opening one 16 KiB record with each TLS 1.3 AEAD
//!   alone, which is what the choice of suite changes.
//!
//! `cargo bench -p picket-benches --bench handshake`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::io::{Read, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use picket_control::auth::PodIdentity;
use picket_control::ca::Ca;
use picket_proxy::mesh::identity::server_name_for;
use picket_proxy::mesh::Credentials;
use picket_test_support::certs::TestCa;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

fn pod(name: &str, uid: &str) -> PodIdentity {
    PodIdentity {
        namespace: "bench".into(),
        name: name.into(),
        uid: uid.into(),
        service_account: name.into(),
    }
}

/// Credentials for `who`, issued by `ca`.
fn credentials(ca: &Ca, who: &PodIdentity) -> Arc<Credentials> {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("CSR");
    let issued = ca.issue(csr.der(), who, SystemTime::now()).expect("issued");
    let credentials = Credentials::new();
    credentials
        .set(
            issued.chain,
            key.serialize_der(),
            ca.anchors(),
            ca.trust_domain(),
            issued.not_after,
        )
        .expect("credentials");
    credentials
}

/// Moves what `from` has to send into `to`.
fn deliver(from: &mut Connection, to: &mut Connection) {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).expect("write_tls");
    }
    let mut bytes = &wire[..];
    while !bytes.is_empty() {
        to.read_tls(&mut bytes).expect("read_tls");
        to.process_new_packets().expect("handshake");
    }
}

/// A pair of connections handshaken to the end, the server's ticket
/// received by the client.
fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
    uid: &str,
) -> (Connection, Connection) {
    let name = server_name_for(uid).expect("server name");
    let mut c = Connection::from(ClientConnection::new(client.clone(), name).expect("client"));
    let mut s = Connection::from(ServerConnection::new(server.clone()).expect("server"));
    while c.is_handshaking() || s.is_handshaking() {
        deliver(&mut c, &mut s);
        deliver(&mut s, &mut c);
    }
    // The ticket.
    deliver(&mut s, &mut c);
    (c, s)
}

/// One handshake; whether it resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, uid: &str) -> bool {
    let (c, _) = connect(client, server, uid);
    c.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// `data` from `from` to `to`: encrypted, delivered, decrypted into `out`.
fn send(from: &mut Connection, to: &mut Connection, data: &[u8], out: &mut [u8]) {
    from.writer().write_all(data).expect("plaintext in");
    deliver(from, to);
    let mut read = 0;
    while read < data.len() {
        read += to.reader().read(&mut out[read..]).expect("plaintext out");
    }
}

/// One ephemeral key exchange, both ends (each makes a key pair and
/// agrees on the other's public key): what every handshake, resumed or
/// not, computes.
fn key_exchange(c: &mut Criterion, name: &str, algorithm: &'static ring::agreement::Algorithm) {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey};
    let rng = ring::rand::SystemRandom::new();
    let mut group = c.benchmark_group("kx");
    group.bench_function(name, |b| {
        b.iter(|| {
            let client = EphemeralPrivateKey::generate(algorithm, &rng).expect("key");
            let server = EphemeralPrivateKey::generate(algorithm, &rng).expect("key");
            let client_public = client.compute_public_key().expect("public");
            let server_public = server.compute_public_key().expect("public");
            let a = agree_ephemeral(
                client,
                &UnparsedPublicKey::new(algorithm, server_public),
                |k| k[0],
            );
            let b = agree_ephemeral(
                server,
                &UnparsedPublicKey::new(algorithm, client_public),
                |k| k[0],
            );
            assert_eq!(a.ok(), b.ok());
        })
    });
    group.finish();
}

/// Seals and opens one record with `algorithm`.
fn aead(c: &mut Criterion, name: &str, algorithm: &'static ring::aead::Algorithm) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key =
        LessSafeKey::new(UnboundKey::new(algorithm, &vec![7u8; algorithm.key_len()]).expect("key"));
    let mut record = vec![1u8; 16 * 1024];
    let mut group = c.benchmark_group("aead");
    group.throughput(Throughput::Bytes(record.len() as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            let nonce = || Nonce::assume_unique_for_key([3u8; 12]);
            let tag = key
                .seal_in_place_separate_tag(nonce(), Aad::empty(), &mut record)
                .expect("sealed");
            let mut sealed = std::mem::take(&mut record);
            sealed.extend_from_slice(tag.as_ref());
            let len = key
                .open_in_place(nonce(), Aad::empty(), &mut sealed)
                .expect("opened")
                .len();
            sealed.truncate(len);
            record = sealed;
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let root = TestCa::root("bench-root").expect("root");
    let ca = Ca::from_pem(
        root.cert_pem.as_bytes(),
        root.key_pem.as_bytes(),
        root.cert_pem.as_bytes(),
        "cluster.local",
        Duration::from_secs(3600),
    )
    .expect("CA");
    let server_uid = "00000001-1111-4222-8333-944455556666";
    let server = credentials(&ca, &pod("api", server_uid));
    let client = credentials(&ca, &pod("web", "00000002-1111-4222-8333-944455556666"));
    let server_config = server.server_config();
    let resuming = client.client_config();
    let mut full = (*resuming).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let full = Arc::new(full);

    assert!(!handshake(&full, &server_config, server_uid));
    handshake(&resuming, &server_config, server_uid);
    assert!(
        handshake(&resuming, &server_config, server_uid),
        "the second handshake resumes"
    );

    let mut group = c.benchmark_group("mtls-handshake");
    group.bench_function("full", |b| {
        b.iter(|| handshake(&full, &server_config, server_uid))
    });
    group.bench_function("resumed", |b| {
        b.iter(|| assert!(handshake(&resuming, &server_config, server_uid)))
    });
    group.finish();

    let (mut from, mut to) = connect(&resuming, &server_config, server_uid);
    let data = vec![5u8; 32 * 1024];
    let mut out = vec![0u8; data.len()];
    let mut group = c.benchmark_group("mtls-records");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function(
        format!(
            "32KiB-{:?}",
            from.negotiated_cipher_suite().expect("suite").suite()
        ),
        |b| b.iter(|| send(&mut from, &mut to, &data, &mut out)),
    );
    group.finish();

    key_exchange(c, "x25519", &ring::agreement::X25519);
    key_exchange(c, "p256", &ring::agreement::ECDH_P256);
    aead(c, "aes-128-gcm-16KiB", &ring::aead::AES_128_GCM);
    aead(c, "aes-256-gcm-16KiB", &ring::aead::AES_256_GCM);
    aead(c, "chacha20-poly1305-16KiB", &ring::aead::CHACHA20_POLY1305);
}

criterion_group!(benches, bench);
criterion_main!(benches);

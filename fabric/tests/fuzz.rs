//! Decoder fuzzing: random and mutated frames never panic any decoder of
//! `tierblk_fabric::proto`, and whatever decodes re-encodes consistently.

mod common;

use common::Rng;
use tierblk_fabric::proto::{self, Info, Request, SimpleReply};

/// Feed `buf` to every decoder; check round trips of what decodes. Returns
/// how many transmission/negotiation frames decoded successfully.
fn decode_everything(buf: &[u8]) -> usize {
    let mut ok = 0;
    ok += proto::decode_greeting(buf).is_ok() as usize;
    ok += proto::decode_client_flags(buf).is_ok() as usize;
    if let Ok(h) = proto::decode_option_header(buf) {
        ok += 1;
        assert!(h.len <= proto::MAX_OPTION_LEN);
    }
    for option in [
        proto::OPT_EXPORT_NAME,
        proto::OPT_ABORT,
        proto::OPT_LIST,
        proto::OPT_INFO,
        proto::OPT_GO,
        proto::OPT_STARTTLS,
        proto::OPT_TIERBLK_AUTH_CHALLENGE,
        proto::OPT_TIERBLK_AUTH_PROOF,
        proto::OPT_TIERBLK_CONTROL,
        u32::MAX,
    ] {
        let _ = proto::decode_option(option, buf);
    }
    if let Ok(p) = proto::decode_auth_proof(buf) {
        ok += 1;
        assert_eq!(&proto::encode_auth_proof(&p)[..], buf);
    }
    if let Ok(r) = proto::decode_auth_reply(buf) {
        ok += 1;
        assert_eq!(&r[..], buf);
    }
    if let Ok(r) = proto::decode_info_request(buf) {
        ok += 1;
        assert!(r.name.len() <= proto::MAX_STRING_LEN);
        assert_eq!(proto::encode_info_request(&r.name, &r.requests), buf);
    }
    if let Ok(h) = proto::decode_option_reply_header(buf) {
        ok += 1;
        assert!(h.len <= proto::MAX_OPTION_REPLY_LEN);
    }
    ok += proto::decode_rep_server(buf).is_ok() as usize;
    if let Ok(i) = proto::decode_info(buf) {
        ok += 1;
        if !matches!(i, Info::Unknown(_)) {
            assert_eq!(proto::encode_info(&i), buf);
        }
    }
    let _ = proto::decode_export_name_reply(buf);
    if let Ok(r) = Request::decode(buf) {
        ok += 1;
        assert_eq!(&r.encode()[..], &buf[..proto::REQUEST_LEN]);
        for size in [0, 1, 4096, u64::MAX] {
            for ro in [false, true] {
                let _ = proto::check_request(&r, size, ro);
            }
        }
    }
    if let Ok(r) = SimpleReply::decode(buf) {
        ok += 1;
        assert_eq!(&r.encode()[..], &buf[..proto::REPLY_LEN]);
    }
    let _ = proto::nbd_to_errno(buf.first().copied().unwrap_or(0) as u32);
    ok
}

/// Valid frames of every kind, as mutation seeds.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = vec![
        proto::encode_greeting(3).to_vec(),
        proto::encode_client_flags(3).to_vec(),
        proto::encode_info_request("disk", &[proto::INFO_BLOCK_SIZE, proto::INFO_NAME]),
        proto::encode_rep_server("export-name"),
        proto::encode_info(&Info::Export {
            size: 1 << 30,
            flags: 0x7f,
        }),
        proto::encode_info(&Info::BlockSize {
            min: 512,
            preferred: 4096,
            max: 1 << 25,
        }),
        proto::encode_info(&Info::Name("n".into())),
        proto::encode_export_name_reply(4096, 3, false),
        proto::encode_auth_proof(&proto::AuthProof {
            client_nonce: [0x5a; proto::AUTH_NONCE_LEN],
            mac: [0xa5; proto::AUTH_MAC_LEN],
        })
        .to_vec(),
        vec![0x3c; proto::AUTH_NONCE_LEN],
        Request {
            flags: 1,
            command: proto::CMD_WRITE,
            cookie: 9,
            offset: 4096,
            len: 512,
        }
        .encode()
        .to_vec(),
        SimpleReply {
            error: 5,
            cookie: 9,
        }
        .encode()
        .to_vec(),
    ];
    let mut o = Vec::new();
    proto::encode_option(proto::OPT_GO, &v[2].clone(), &mut o);
    v.push(o);
    let mut r = Vec::new();
    proto::encode_option_reply(proto::OPT_GO, proto::REP_INFO, &v[4].clone(), &mut r);
    v.push(r);
    let proof = v[8].clone();
    let mut o = Vec::new();
    proto::encode_option(proto::OPT_TIERBLK_AUTH_PROOF, &proof, &mut o);
    v.push(o);
    let mut r = Vec::new();
    proto::encode_option_reply(
        proto::OPT_TIERBLK_AUTH_CHALLENGE,
        proto::REP_TIERBLK_AUTH,
        &[7; proto::AUTH_NONCE_LEN],
        &mut r,
    );
    v.push(r);
    v
}

/// 200 000 random buffers (lengths 0..96, biased to the frame sizes) never
/// panic a decoder.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(1);
    for _ in 0..200_000 {
        let len = match rng.below(4) {
            0 => [2, 4, 10, 12, 14, 16, 18, 20, 28, 32, 64][rng.below(11) as usize],
            _ => rng.below(96) as usize,
        };
        let buf = rng.bytes(len);
        decode_everything(&buf);
    }
}

/// 200 000 mutations of valid frames (bit flips, byte sets, truncation,
/// extension, interesting values in length fields) never panic a decoder.
#[test]
fn mutated_frames_never_panic() {
    let seeds = seeds();
    for s in &seeds {
        assert!(decode_everything(s) > 0, "seed {s:02x?} does not decode");
    }
    let mut decoded = 0;
    let mut rng = Rng::new(2);
    const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..200_000 {
        let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
        for _ in 0..1 + rng.below(3) {
            match rng.below(5) {
                0 if !b.is_empty() => {
                    let p = rng.below(b.len() as u64) as usize;
                    b[p] ^= 1 << rng.below(8);
                }
                1 if !b.is_empty() => {
                    let p = rng.below(b.len() as u64) as usize;
                    b[p] = INTERESTING[rng.below(6) as usize];
                }
                2 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
                3 => {
                    let n = rng.below(16) as usize;
                    let extra = rng.bytes(n);
                    b.extend(extra);
                }
                _ if b.len() >= 4 => {
                    let p = rng.below(b.len() as u64 - 3) as usize;
                    b[p..p + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
                }
                _ => {}
            }
        }
        decoded += decode_everything(&b);
    }
    // The mutations stay close enough to valid frames to exercise the
    // decoders past their magic checks.
    assert!(decoded > 50_000, "only {decoded} mutated frames decoded");
}

//! Peer authentication on the fabric: a challenge-response over the cluster
//! secret, carried by two NBD options of ours.
//!
//! # Why
//!
//! Every storage processor of a cluster holds the same *cluster secret*. A
//! peer that can reach an NBD listener (TCP in particular) must not be able to
//! list or read an export unless it holds that secret, and a client must not
//! send a tier-2 object's I/O to an impostor. Both ends therefore prove
//! knowledge of the secret to each other before anything else happens on the
//! connection:
//!
//! 1. the client sends `OPT_TIERBLK_AUTH_CHALLENGE` (empty);
//! 2. the server answers a fresh 32-byte *server nonce* `Ns`;
//! 3. the client sends `OPT_TIERBLK_AUTH_PROOF`: a fresh 32-byte *client
//!    nonce* `Nc` and `HMAC-SHA256(secret, "tierblk-nbd-auth-v1 client" || Ns
//!    || Nc)`;
//! 4. the server checks it (constant time) and answers
//!    `HMAC-SHA256(secret, "tierblk-nbd-auth-v1 server" || Ns || Nc)`, which
//!    the client checks in turn.
//!
//! Each side's nonce is fresh, so neither proof can be replayed: a recorded
//! client proof is useless against a new server nonce, a recorded server
//! proof useless against a new client nonce. The two labels differ, so a
//! proof cannot be reflected back to its sender. The exact frames are in
//! [`super::proto`] (`OPT_TIERBLK_AUTH_*`, `REP_TIERBLK_AUTH`).
//!
//! What this does *not* do: encrypt or integrity-protect the stream. An
//! active attacker on the path can let the handshake through and then take
//! over the connection. It keeps out peers that merely reach the port
//! (misconfigured or foreign hosts); TLS-PSK remains the plan for hostile
//! networks (see `fabric/README.md`).
//!
//! The secret never appears in logs: [`Secret`]'s `Debug` prints no byte of
//! it, and its memory is zeroed when the last copy is dropped.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Length of a nonce (server's and client's).
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 proof.
pub const MAC_LEN: usize = 32;
/// Shortest secret accepted (128 bits).
pub const MIN_SECRET_LEN: usize = 16;
/// Largest secret file read (a secret is a short line; anything larger is a
/// wrong path).
pub const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// Label of the client's proof.
const CLIENT_LABEL: &[u8] = b"tierblk-nbd-auth-v1 client";
/// Label of the server's proof.
const SERVER_LABEL: &[u8] = b"tierblk-nbd-auth-v1 server";

type HmacSha256 = Hmac<Sha256>;

/// A nonce of the handshake.
pub type Nonce = [u8; NONCE_LEN];
/// A proof (HMAC-SHA256 output).
pub type Proof = [u8; MAC_LEN];

/// A secret that cannot be used, or no randomness.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error("cluster secret too short: {len} bytes, at least {MIN_SECRET_LEN} required")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The secret file cannot be read.
    #[error("cluster secret file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The secret file is unusable (too short, too long).
    #[error("cluster secret file {}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HMAC key could not be set up.
    #[error("cluster secret: invalid HMAC key")]
    Key,
    /// The kernel gave no random bytes.
    #[error("cannot get random bytes for a nonce: {0}")]
    Random(io::Error),
}

/// Key bytes, zeroed on drop.
struct Key(Vec<u8>);

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, exclusive reference to a byte; the
            // volatile write keeps the compiler from eliding the wipe.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

struct Inner {
    /// The raw secret (kept for future derivations, e.g. TLS-PSK keys).
    _key: Key,
    /// HMAC state keyed with the secret, cloned per proof.
    mac: HmacSha256,
}

/// The cluster secret shared by the storage processors. Cheap to clone;
/// `Debug` shows no byte of it.
#[derive(Clone)]
pub struct Secret(Arc<Inner>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A secret of these bytes; at least [`MIN_SECRET_LEN`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, AuthError> {
        let key = Key(bytes.into());
        if key.0.len() < MIN_SECRET_LEN {
            return Err(AuthError::TooShort { len: key.0.len() });
        }
        let mac = HmacSha256::new_from_slice(&key.0).map_err(|_| AuthError::Key)?;
        Ok(Secret(Arc::new(Inner { _key: key, mac })))
    }

    /// The secret stored in the file at `path`: its content with trailing
    /// whitespace (newline, spaces, tabs, CR) removed, at least
    /// [`MIN_SECRET_LEN`] bytes. A file readable by group or others is
    /// accepted with a warning.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret, AuthError> {
        let path = path.as_ref();
        let file_err = |source| AuthError::File {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| AuthError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let f = std::fs::File::open(path).map_err(file_err)?;
        let meta = f.metadata().map_err(file_err)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "cluster secret file is readable by group or others"
                );
            }
        }
        let mut key = Key(Vec::with_capacity(256));
        f.take(MAX_SECRET_FILE_LEN + 1)
            .read_to_end(&mut key.0)
            .map_err(file_err)?;
        if key.0.len() as u64 > MAX_SECRET_FILE_LEN {
            return Err(bad(format!(
                "larger than {MAX_SECRET_FILE_LEN} bytes (not a secret file?)"
            )));
        }
        let keep = key
            .0
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        // Wipe the trimmed tail too before shortening.
        for b in &mut key.0[keep..] {
            // SAFETY: a valid, exclusive reference to a byte.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        key.0.truncate(keep);
        if key.0.len() < MIN_SECRET_LEN {
            return Err(bad(format!(
                "secret is {} bytes, at least {MIN_SECRET_LEN} required",
                key.0.len()
            )));
        }
        let mac = HmacSha256::new_from_slice(&key.0).map_err(|_| AuthError::Key)?;
        Ok(Secret(Arc::new(Inner { _key: key, mac })))
    }

    fn proof(&self, label: &[u8], server_nonce: &Nonce, client_nonce: &Nonce) -> HmacSha256 {
        let mut m = self.0.mac.clone();
        m.update(label);
        m.update(server_nonce);
        m.update(client_nonce);
        m
    }

    /// The client's proof: `HMAC(secret, "tierblk-nbd-auth-v1 client" ||
    /// server_nonce || client_nonce)`.
    pub fn client_proof(&self, server_nonce: &Nonce, client_nonce: &Nonce) -> Proof {
        self.proof(CLIENT_LABEL, server_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The server's proof: `HMAC(secret, "tierblk-nbd-auth-v1 server" ||
    /// server_nonce || client_nonce)`.
    pub fn server_proof(&self, server_nonce: &Nonce, client_nonce: &Nonce) -> Proof {
        self.proof(SERVER_LABEL, server_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the client's proof for these nonces (constant-time
    /// comparison).
    pub fn verify_client_proof(
        &self,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        proof: &[u8],
    ) -> bool {
        self.proof(CLIENT_LABEL, server_nonce, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// Whether `proof` is the server's proof for these nonces (constant-time
    /// comparison).
    pub fn verify_server_proof(
        &self,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        proof: &[u8],
    ) -> bool {
        self.proof(SERVER_LABEL, server_nonce, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// A fresh random nonce from the kernel (`getrandom(2)`, falling back to
/// `/dev/urandom` where the call does not exist).
pub fn nonce() -> Result<Nonce, AuthError> {
    let mut n = [0u8; NONCE_LEN];
    let mut done = 0;
    while done < n.len() {
        let rest = &mut n[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r > 0 {
            done += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) => {
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut n))
                    .map_err(AuthError::Random)?;
                return Ok(n);
            }
            _ => return Err(AuthError::Random(e)),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_key() {
        assert!(matches!(
            Secret::new(b"0123456789abcde".to_vec()),
            Err(AuthError::TooShort { len: 15 })
        ));
        let s = Secret::new("correct horse battery staple").unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("horse"), "{d}");
        assert_eq!(d, "Secret(<redacted>)");
    }

    #[test]
    fn proofs_verify_and_differ_by_role_and_nonce() {
        let s = Secret::new("0123456789abcdef0123").unwrap();
        let other = Secret::new("0123456789abcdef0124").unwrap();
        let (sn, cn) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(sn, cn);
        let c = s.client_proof(&sn, &cn);
        let v = s.server_proof(&sn, &cn);
        assert_ne!(c, v, "client and server proofs must differ");
        assert!(s.verify_client_proof(&sn, &cn, &c));
        assert!(!s.verify_client_proof(&sn, &cn, &v));
        assert!(!s.verify_client_proof(&cn, &sn, &c));
        assert!(!s.verify_client_proof(&sn, &cn, &c[..31]));
        assert!(!other.verify_client_proof(&sn, &cn, &c));
        assert!(s.verify_server_proof(&sn, &cn, &v));
        assert!(!other.verify_server_proof(&sn, &cn, &v));
        // RFC 4231 test case 2 shape: HMAC-SHA256 of a known key/message.
        let k = Secret::new(vec![0x0b; 20]).unwrap();
        let mut m = k.0.mac.clone();
        m.update(b"Hi There");
        let out: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(
            out[..4],
            [0xb0, 0x34, 0x4c, 0x61],
            "HMAC-SHA256 RFC 4231 test case 1"
        );
    }

    #[test]
    fn secret_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("tierblk-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        std::fs::write(&a, "0123456789abcdef0123\n \t\r\n").unwrap();
        let b = dir.join("b");
        std::fs::write(&b, "0123456789abcdef0123").unwrap();
        let (sa, sb) = (
            Secret::from_file(&a).unwrap(),
            Secret::from_file(&b).unwrap(),
        );
        let (sn, cn) = ([1u8; 32], [2u8; 32]);
        assert_eq!(sa.client_proof(&sn, &cn), sb.client_proof(&sn, &cn));
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = Secret::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("at least 16"), "{e}");
        let e = Secret::from_file(dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing") && e.contains("cluster secret file"),
            "{e}"
        );
        let e = Secret::from_file(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

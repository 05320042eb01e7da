//! NBD wire format: constants, encoders and decoders.
//!
//! The subset of the NBD protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>)
//! that the fabric speaks: fixed newstyle negotiation (options `GO`, `INFO`,
//! `LIST`, `ABORT`, `EXPORT_NAME`; replies `ACK`, `SERVER`, `INFO` with
//! `NBD_INFO_EXPORT` / `NBD_INFO_NAME` / `NBD_INFO_BLOCK_SIZE`, and the error
//! replies) and the transmission phase with simple replies only (commands
//! `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM`, `WRITE_ZEROES`; flags `FUA`,
//! `NO_HOLE`).
//!
//! Two options are ours, outside the protocol's numbering (a foreign server
//! answers them `NBD_REP_ERR_UNSUP`, as it must for any unknown option): the
//! cluster-secret challenge-response of [`super::auth`],
//! [`OPT_TIERBLK_AUTH_CHALLENGE`] and [`OPT_TIERBLK_AUTH_PROOF`], both
//! answered with a [`REP_TIERBLK_AUTH`] reply carrying 32 bytes.
//!
//! Everything here is a pure function over byte slices: no I/O, no state.
//! Decoders never panic, whatever the input (they are fuzzed by
//! `fabric/tests/fuzz.rs`); every length read from the wire is checked against
//! an explicit limit ([`MAX_OPTION_LEN`], [`MAX_REQUEST_LEN`],
//! [`MAX_STRING_LEN`]) before anything is allocated for it. All integers are
//! big-endian (network order), as the protocol requires.

use thiserror::Error;

/// `NBDMAGIC`: first 8 bytes of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle magic (greeting) and option request magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply (never negotiated here; recognised only to
/// reject it cleanly).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the server must omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option: select an export and enter transmission (old style, no reply on
/// failure).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (not supported here).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies (not supported here).
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option of ours (`"TBK"`, 1): ask for a server nonce to authenticate with
/// the cluster secret. Empty payload; answered with [`REP_TIERBLK_AUTH`]
/// carrying the 32-byte server nonce.
pub const OPT_TIERBLK_AUTH_CHALLENGE: u32 = 0x5442_4b01;
/// Option of ours (`"TBK"`, 2): the client's proof, client nonce (32 bytes)
/// then `HMAC-SHA256(secret, "tierblk-nbd-auth-v1 client" || server nonce ||
/// client nonce)` (32 bytes). Answered with [`REP_TIERBLK_AUTH`] carrying the
/// server's proof, or `NBD_REP_ERR_POLICY` when wrong.
pub const OPT_TIERBLK_AUTH_PROOF: u32 = 0x5442_4b02;
/// Option of ours (`"TBK"`, 0x10): one request of the control protocol
/// between storage processors (assignments, state), after authentication.
/// Payload: [`CONTROL_VERSION`] (u32 BE) then the request body; answered
/// with [`REP_TIERBLK_CONTROL`] carrying the version then the reply body, or
/// an error reply with a message.
pub const OPT_TIERBLK_CONTROL: u32 = 0x5442_4b10;
/// Version of the control protocol carried by [`OPT_TIERBLK_CONTROL`].
pub const CONTROL_VERSION: u32 = 1;

/// Reply: option acknowledged / end of a list of replies.
pub const REP_ACK: u32 = 1;
/// Reply: one export of a `LIST`.
pub const REP_SERVER: u32 = 2;
/// Reply: one information item of `INFO` / `GO`.
pub const REP_INFO: u32 = 3;
/// Reply of ours to [`OPT_TIERBLK_AUTH_CHALLENGE`] (server nonce) and
/// [`OPT_TIERBLK_AUTH_PROOF`] (server proof): exactly 32 bytes of payload.
pub const REP_TIERBLK_AUTH: u32 = 0x5442_4b01;
/// Reply of ours to [`OPT_TIERBLK_CONTROL`].
pub const REP_TIERBLK_CONTROL: u32 = 0x5442_4b10;
/// Bit set in every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Error reply: option unknown or unsupported.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Error reply: forbidden by server policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Error reply: syntactically or semantically invalid option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Error reply: not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// Error reply: TLS required.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// Error reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Error reply: server shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Error reply: block size negotiation required.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Error reply: request too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Info item: size and transmission flags (mandatory in every `INFO`/`GO`).
pub const INFO_EXPORT: u16 = 0;
/// Info item: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Info item: description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info item: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is valid.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: rotational media.
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `NBD_CMD_TRIM` supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: several connections see each other's flushed writes.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (payload follows the header).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect (no reply).
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim (discard).
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: write-zeroes must not punch a hole (accepted, a hint).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// NBD error: operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// NBD error: I/O error.
pub const NBD_EIO: u32 = 5;
/// NBD error: out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// NBD error: invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// NBD error: no space left.
pub const NBD_ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// NBD error: not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// NBD error: server shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

/// Largest option payload accepted (a name is at most 4096 bytes; an
/// `INFO`/`GO` payload adds 6 bytes and a few info requests).
pub const MAX_OPTION_LEN: u32 = 16 * 1024;
/// Largest option reply payload accepted by the client.
pub const MAX_OPTION_REPLY_LEN: u32 = 64 * 1024;
/// Largest string (export name, description) per the protocol.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest `READ`/`WRITE` payload (qemu-nbd uses the same 32 MiB cap).
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;
/// Largest number of info requests in one `INFO`/`GO`.
pub const MAX_INFO_REQUESTS: usize = 64;

/// Length of the server greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const REPLY_LEN: usize = 16;
/// Length of a nonce of the authentication options.
pub const AUTH_NONCE_LEN: usize = 32;
/// Length of a proof (HMAC-SHA256) of the authentication options.
pub const AUTH_MAC_LEN: usize = 32;
/// Length of the [`OPT_TIERBLK_AUTH_PROOF`] payload.
pub const AUTH_PROOF_LEN: usize = AUTH_NONCE_LEN + AUTH_MAC_LEN;

/// A frame that cannot be decoded. Any of these closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// Fewer bytes than the frame needs.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Short {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A magic number is wrong.
    #[error("bad {what} magic {got:#x}")]
    BadMagic {
        /// Which magic.
        what: &'static str,
        /// The value received.
        got: u64,
    },
    /// A length field exceeds its limit.
    #[error("{what} length {len} exceeds limit {max}")]
    TooLong {
        /// Which length.
        what: &'static str,
        /// The value received.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A field has a value the protocol forbids.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

/// Result of decoding.
pub type ProtoResult<T> = Result<T, ProtoError>;

fn need(buf: &[u8], n: usize) -> ProtoResult<()> {
    if buf.len() < n {
        Err(ProtoError::Short {
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn string(bytes: &[u8], what: &'static str) -> ProtoResult<String> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(ProtoError::TooLong {
            what,
            len: bytes.len() as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    if bytes.contains(&0) {
        return Err(ProtoError::Invalid("string contains NUL"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Invalid("string is not UTF-8"))
}

// ---------------------------------------------------------------- handshake

/// Server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Decode the server greeting; returns the handshake flags. Only newstyle
/// servers are accepted (oldstyle has no option haggling).
pub fn decode_greeting(buf: &[u8]) -> ProtoResult<u16> {
    need(buf, GREETING_LEN)?;
    let m = be64(buf, 0);
    if m != NBD_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "NBDMAGIC",
            got: m,
        });
    }
    let m = be64(buf, 8);
    if m != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "IHAVEOPT (oldstyle server?)",
            got: m,
        });
    }
    Ok(be16(buf, 16))
}

/// Client flags (sent right after the greeting).
pub fn encode_client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// Decode the client flags; rejects bits this server does not know.
pub fn decode_client_flags(buf: &[u8]) -> ProtoResult<u32> {
    need(buf, 4)?;
    let f = be32(buf, 0);
    if f & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::Invalid("unknown client flags"));
    }
    Ok(f)
}

/// Header of an option request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`OPT_*`).
    pub option: u32,
    /// Payload length that follows.
    pub len: u32,
}

/// Encode an option request (header and payload) into `out`.
pub fn encode_option(option: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Decode an option request header; the payload length is checked against
/// [`MAX_OPTION_LEN`].
pub fn decode_option_header(buf: &[u8]) -> ProtoResult<OptionHeader> {
    need(buf, OPTION_HEADER_LEN)?;
    let m = be64(buf, 0);
    if m != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "option",
            got: m,
        });
    }
    let option = be32(buf, 8);
    let len = be32(buf, 12);
    if len > MAX_OPTION_LEN {
        return Err(ProtoError::TooLong {
            what: "option",
            len: len as u64,
            max: MAX_OPTION_LEN as u64,
        });
    }
    Ok(OptionHeader { option, len })
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (empty: the default export).
    pub name: String,
    /// Info items requested (`INFO_*`).
    pub requests: Vec<u16>,
}

/// Encode the payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub fn encode_info_request(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        b.extend_from_slice(&r.to_be_bytes());
    }
    b
}

/// Decode the payload of `NBD_OPT_INFO` / `NBD_OPT_GO`. The payload must be
/// exactly as long as its fields say.
pub fn decode_info_request(data: &[u8]) -> ProtoResult<InfoRequest> {
    need(data, 4)?;
    let name_len = be32(data, 0) as usize;
    if name_len > MAX_STRING_LEN {
        return Err(ProtoError::TooLong {
            what: "export name",
            len: name_len as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    need(data, 4 + name_len + 2)?;
    let name = string(&data[4..4 + name_len], "export name")?;
    let n = be16(data, 4 + name_len) as usize;
    if n > MAX_INFO_REQUESTS {
        return Err(ProtoError::TooLong {
            what: "info requests",
            len: n as u64,
            max: MAX_INFO_REQUESTS as u64,
        });
    }
    let rest = &data[4 + name_len + 2..];
    if rest.len() != 2 * n {
        return Err(ProtoError::Invalid(
            "info request count does not match length",
        ));
    }
    let requests = rest.chunks_exact(2).map(|c| be16(c, 0)).collect();
    Ok(InfoRequest { name, requests })
}

/// A decoded option request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` with the export name.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// [`OPT_TIERBLK_AUTH_CHALLENGE`].
    AuthChallenge,
    /// [`OPT_TIERBLK_AUTH_PROOF`].
    AuthProof(AuthProof),
    /// [`OPT_TIERBLK_CONTROL`] of a known version, with its body.
    Control(Vec<u8>),
    /// Any other option (answered with `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

/// Decode an option from its header's code and its payload.
pub fn decode_option(option: u32, data: &[u8]) -> ProtoResult<ClientOption> {
    if data.len() > MAX_OPTION_LEN as usize {
        return Err(ProtoError::TooLong {
            what: "option",
            len: data.len() as u64,
            max: MAX_OPTION_LEN as u64,
        });
    }
    Ok(match option {
        OPT_EXPORT_NAME => ClientOption::ExportName(string(data, "export name")?),
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST => {
            if !data.is_empty() {
                return Err(ProtoError::Invalid("NBD_OPT_LIST with a payload"));
            }
            ClientOption::List
        }
        OPT_INFO => ClientOption::Info(decode_info_request(data)?),
        OPT_GO => ClientOption::Go(decode_info_request(data)?),
        OPT_TIERBLK_AUTH_CHALLENGE => {
            if !data.is_empty() {
                return Err(ProtoError::Invalid(
                    "authentication challenge with a payload",
                ));
            }
            ClientOption::AuthChallenge
        }
        OPT_TIERBLK_AUTH_PROOF => ClientOption::AuthProof(decode_auth_proof(data)?),
        OPT_TIERBLK_CONTROL => ClientOption::Control(decode_control(data)?.to_vec()),
        other => ClientOption::Unsupported(other),
    })
}

/// Encode a control request or reply: the version, then `body`.
pub fn encode_control(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&CONTROL_VERSION.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The body of a control request or reply; refuses a short frame or another
/// version.
pub fn decode_control(data: &[u8]) -> ProtoResult<&[u8]> {
    if data.len() < 4 {
        return Err(ProtoError::Short {
            need: 4,
            have: data.len(),
        });
    }
    let version = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    if version != CONTROL_VERSION {
        return Err(ProtoError::Invalid("unsupported control protocol version"));
    }
    Ok(&data[4..])
}

/// Payload of [`OPT_TIERBLK_AUTH_PROOF`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthProof {
    /// The client's fresh nonce.
    pub client_nonce: [u8; AUTH_NONCE_LEN],
    /// The client's HMAC over the server nonce and `client_nonce`.
    pub mac: [u8; AUTH_MAC_LEN],
}

/// Encode the payload of [`OPT_TIERBLK_AUTH_PROOF`].
pub fn encode_auth_proof(p: &AuthProof) -> [u8; AUTH_PROOF_LEN] {
    let mut b = [0u8; AUTH_PROOF_LEN];
    b[..AUTH_NONCE_LEN].copy_from_slice(&p.client_nonce);
    b[AUTH_NONCE_LEN..].copy_from_slice(&p.mac);
    b
}

/// Decode the payload of [`OPT_TIERBLK_AUTH_PROOF`]: exactly
/// [`AUTH_PROOF_LEN`] bytes.
pub fn decode_auth_proof(data: &[u8]) -> ProtoResult<AuthProof> {
    if data.len() != AUTH_PROOF_LEN {
        return Err(ProtoError::Invalid("authentication proof must be 64 bytes"));
    }
    let mut p = AuthProof {
        client_nonce: [0; AUTH_NONCE_LEN],
        mac: [0; AUTH_MAC_LEN],
    };
    p.client_nonce.copy_from_slice(&data[..AUTH_NONCE_LEN]);
    p.mac.copy_from_slice(&data[AUTH_NONCE_LEN..]);
    Ok(p)
}

/// Decode the payload of a [`REP_TIERBLK_AUTH`] reply (a server nonce or a
/// server proof): exactly 32 bytes. (Its encoding is the 32 bytes
/// themselves.)
pub fn decode_auth_reply(data: &[u8]) -> ProtoResult<[u8; 32]> {
    <[u8; 32]>::try_from(data)
        .map_err(|_| ProtoError::Invalid("authentication reply must be 32 bytes"))
}

/// Header of an option reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// Reply type (`REP_*`).
    pub reply: u32,
    /// Payload length that follows.
    pub len: u32,
}

/// Encode an option reply (header and payload) into `out`.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Decode an option reply header; the payload length is checked against
/// [`MAX_OPTION_REPLY_LEN`].
pub fn decode_option_reply_header(buf: &[u8]) -> ProtoResult<OptionReplyHeader> {
    need(buf, OPTION_REPLY_HEADER_LEN)?;
    let m = be64(buf, 0);
    if m != OPT_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "option reply",
            got: m,
        });
    }
    let len = be32(buf, 16);
    if len > MAX_OPTION_REPLY_LEN {
        return Err(ProtoError::TooLong {
            what: "option reply",
            len: len as u64,
            max: MAX_OPTION_REPLY_LEN as u64,
        });
    }
    Ok(OptionReplyHeader {
        option: be32(buf, 8),
        reply: be32(buf, 12),
        len,
    })
}

/// Payload of `NBD_REP_SERVER`: one export name.
pub fn encode_rep_server(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// Decode the payload of `NBD_REP_SERVER`: the export name (a description
/// may follow; it is ignored).
pub fn decode_rep_server(data: &[u8]) -> ProtoResult<String> {
    need(data, 4)?;
    let n = be32(data, 0) as usize;
    if n > MAX_STRING_LEN {
        return Err(ProtoError::TooLong {
            what: "export name",
            len: n as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    need(data, 4 + n)?;
    string(&data[4..4 + n], "export name")
}

/// One `NBD_REP_INFO` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size in bytes and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags (`TFLAG_*`).
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size (alignment of every request).
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload of one request.
        max: u32,
    },
    /// An info type this implementation does not know (ignored).
    Unknown(u16),
}

/// Encode the payload of an `NBD_REP_INFO`.
pub fn encode_info(info: &Info) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    match info {
        Info::Export { size, flags } => {
            b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(&flags.to_be_bytes());
        }
        Info::Name(s) => {
            b.extend_from_slice(&INFO_NAME.to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        Info::Description(s) => {
            b.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        Info::BlockSize {
            min,
            preferred,
            max,
        } => {
            b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&preferred.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
        }
        Info::Unknown(t) => b.extend_from_slice(&t.to_be_bytes()),
    }
    b
}

/// Decode the payload of an `NBD_REP_INFO`. Known items must have their exact
/// length; block sizes must be sane (powers of two, `min <= preferred`,
/// `min <= max`).
pub fn decode_info(data: &[u8]) -> ProtoResult<Info> {
    need(data, 2)?;
    let t = be16(data, 0);
    let body = &data[2..];
    let exact = |n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(ProtoError::Invalid(
                "NBD_REP_INFO item has the wrong length",
            ))
        }
    };
    Ok(match t {
        INFO_EXPORT => {
            exact(10)?;
            Info::Export {
                size: be64(body, 0),
                flags: be16(body, 8),
            }
        }
        INFO_NAME => Info::Name(string(body, "export name")?),
        INFO_DESCRIPTION => Info::Description(string(body, "description")?),
        INFO_BLOCK_SIZE => {
            exact(12)?;
            let (min, preferred, max) = (be32(body, 0), be32(body, 4), be32(body, 8));
            if !min.is_power_of_two()
                || !preferred.is_power_of_two()
                || min > 64 * 1024
                || min > preferred
                || max < min
            {
                return Err(ProtoError::Invalid("bad block size constraints"));
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            }
        }
        other => Info::Unknown(other),
    })
}

/// Reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, then 124 zero
/// bytes unless `no_zeroes` was negotiated.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    b
}

/// Decode the first 10 bytes of the reply to `NBD_OPT_EXPORT_NAME`:
/// `(size, transmission flags)`.
pub fn decode_export_name_reply(buf: &[u8]) -> ProtoResult<(u64, u16)> {
    need(buf, 10)?;
    Ok((be64(buf, 0), be16(buf, 8)))
}

// ------------------------------------------------------------- transmission

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command (`CMD_*`).
    pub command: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes (payload length for `WRITE`).
    pub len: u32,
}

impl Request {
    /// Encode the 28-byte header.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decode a 28-byte header. Checks the magic only; the meaning of the
    /// fields is checked by [`check_request`].
    pub fn decode(buf: &[u8]) -> ProtoResult<Request> {
        need(buf, REQUEST_LEN)?;
        let m = be32(buf, 0);
        if m != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request",
                got: m as u64,
            });
        }
        Ok(Request {
            flags: be16(buf, 4),
            command: be16(buf, 6),
            cookie: be64(buf, 8),
            offset: be64(buf, 16),
            len: be32(buf, 24),
        })
    }
}

/// A simple reply header (followed by the data of a successful `READ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    /// NBD error (0 on success, `NBD_E*` otherwise).
    pub error: u32,
    /// Cookie of the request answered.
    pub cookie: u64,
}

impl SimpleReply {
    /// Encode the 16-byte header.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }

    /// Decode a 16-byte header. A structured reply (never negotiated) is an
    /// error.
    pub fn decode(buf: &[u8]) -> ProtoResult<SimpleReply> {
        need(buf, REPLY_LEN)?;
        let m = be32(buf, 0);
        if m != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "simple reply",
                got: m as u64,
            });
        }
        Ok(SimpleReply {
            error: be32(buf, 4),
            cookie: be64(buf, 8),
        })
    }
}

/// A request checked against an export, as the server executes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write the `len`-byte payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Trim a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write zeroes over a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Disconnect.
    Disconnect,
}

/// What a server must do with a request it cannot execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Answer with this NBD error; for a `WRITE` the payload (of the request's
    /// length, already checked against [`MAX_REQUEST_LEN`]) must be read and
    /// dropped first.
    Error(u32),
    /// The stream cannot be resynchronised (a `WRITE` payload too large to
    /// skip): close the connection.
    Close,
}

/// Check a decoded request against an export of `size` bytes: command known,
/// flags allowed, range inside the export, length within [`MAX_REQUEST_LEN`],
/// no writes to a read-only export.
pub fn check_request(req: &Request, size: u64, read_only: bool) -> Result<Command, Reject> {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let allowed = match req.command {
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => 0,
    };
    if req.command == CMD_WRITE && req.len > MAX_REQUEST_LEN {
        // The payload cannot be skipped safely.
        return Err(Reject::Close);
    }
    if req.flags & !allowed != 0 {
        return Err(Reject::Error(NBD_EINVAL));
    }
    let in_range = req
        .offset
        .checked_add(req.len as u64)
        .is_some_and(|end| end <= size);
    let writes = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && read_only {
        return Err(Reject::Error(NBD_EPERM));
    }
    match req.command {
        CMD_READ | CMD_WRITE if req.len > MAX_REQUEST_LEN => Err(Reject::Error(NBD_EOVERFLOW)),
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if !in_range => {
            Err(Reject::Error(if writes { NBD_ENOSPC } else { NBD_EINVAL }))
        }
        CMD_READ => Ok(Command::Read {
            offset: req.offset,
            len: req.len,
        }),
        CMD_WRITE => Ok(Command::Write {
            offset: req.offset,
            len: req.len,
            fua,
        }),
        CMD_TRIM => Ok(Command::Trim {
            offset: req.offset,
            len: req.len,
            fua,
        }),
        CMD_WRITE_ZEROES => Ok(Command::WriteZeroes {
            offset: req.offset,
            len: req.len,
            fua,
        }),
        CMD_FLUSH => Ok(Command::Flush),
        CMD_DISC => Ok(Command::Disconnect),
        _ => Err(Reject::Error(NBD_EINVAL)),
    }
}

/// Map a positive errno to the NBD error sent on the wire (unknown ones
/// become `EIO`).
pub fn errno_to_nbd(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS => NBD_EPERM,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC | libc::EDQUOT => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::EOPNOTSUPP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

/// Map an NBD error from the wire to a positive errno (unknown ones become
/// `EIO`).
pub fn nbd_to_errno(error: u32) -> i32 {
    match error {
        NBD_EPERM => libc::EPERM,
        NBD_ENOMEM => libc::ENOMEM,
        NBD_EINVAL => libc::EINVAL,
        NBD_ENOSPC => libc::ENOSPC,
        NBD_EOVERFLOW => libc::EOVERFLOW,
        NBD_ENOTSUP => libc::EOPNOTSUPP,
        NBD_ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(decode_greeting(&g), Ok(3));
        assert!(decode_greeting(&g[..17]).is_err());
    }

    #[test]
    fn option_round_trip() {
        let mut b = Vec::new();
        encode_option(
            OPT_GO,
            &encode_info_request("disk", &[INFO_BLOCK_SIZE]),
            &mut b,
        );
        let h = decode_option_header(&b).unwrap();
        assert_eq!(h.option, OPT_GO);
        let o = decode_option(h.option, &b[16..16 + h.len as usize]).unwrap();
        assert_eq!(
            o,
            ClientOption::Go(InfoRequest {
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE]
            })
        );
        // Count not matching the length.
        let mut bad = encode_info_request("disk", &[1, 2]);
        bad.pop();
        assert!(decode_info_request(&bad).is_err());
    }

    #[test]
    fn auth_round_trip() {
        assert_eq!(
            decode_option(OPT_TIERBLK_AUTH_CHALLENGE, &[]),
            Ok(ClientOption::AuthChallenge)
        );
        assert!(decode_option(OPT_TIERBLK_AUTH_CHALLENGE, &[0]).is_err());
        let p = AuthProof {
            client_nonce: [7; 32],
            mac: [9; 32],
        };
        let b = encode_auth_proof(&p);
        assert_eq!(
            decode_option(OPT_TIERBLK_AUTH_PROOF, &b),
            Ok(ClientOption::AuthProof(p))
        );
        assert!(decode_auth_proof(&b[..63]).is_err());
        assert!(decode_auth_proof(&[0; 65]).is_err());
        assert_eq!(decode_auth_reply(&[3; 32]), Ok([3; 32]));
        assert!(decode_auth_reply(&[3; 31]).is_err());
        assert!(decode_auth_reply(&[3; 33]).is_err());
        // Private numbers: not error replies, not the protocol's options.
        assert_eq!(REP_TIERBLK_AUTH & REP_FLAG_ERROR, 0);
    }

    #[test]
    fn info_round_trip() {
        for i in [
            Info::Export {
                size: 1 << 40,
                flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FUA,
            },
            Info::Name("x".into()),
            Info::BlockSize {
                min: 512,
                preferred: 4096,
                max: MAX_REQUEST_LEN,
            },
        ] {
            assert_eq!(decode_info(&encode_info(&i)), Ok(i));
        }
    }

    #[test]
    fn request_checks() {
        let r = |command, flags, offset, len| Request {
            flags,
            command,
            cookie: 7,
            offset,
            len,
        };
        assert_eq!(
            Request::decode(&r(CMD_READ, 0, 5, 6).encode()),
            Ok(r(CMD_READ, 0, 5, 6))
        );
        assert_eq!(
            check_request(&r(CMD_READ, 0, 0, 512), 512, false),
            Ok(Command::Read {
                offset: 0,
                len: 512
            })
        );
        assert_eq!(
            check_request(&r(CMD_READ, 0, 1, 512), 512, false),
            Err(Reject::Error(NBD_EINVAL))
        );
        assert_eq!(
            check_request(&r(CMD_WRITE, 0, u64::MAX, 512), 512, false),
            Err(Reject::Error(NBD_ENOSPC))
        );
        assert_eq!(
            check_request(&r(CMD_WRITE, 0, 0, MAX_REQUEST_LEN + 1), u64::MAX, false),
            Err(Reject::Close)
        );
        assert_eq!(
            check_request(&r(CMD_WRITE, CMD_FLAG_FUA, 0, 1), 1, true),
            Err(Reject::Error(NBD_EPERM))
        );
        assert_eq!(
            check_request(&r(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), 1, false),
            Err(Reject::Error(NBD_EINVAL))
        );
        assert_eq!(
            check_request(&r(99, 0, 0, 0), 1, false),
            Err(Reject::Error(NBD_EINVAL))
        );
        assert_eq!(
            check_request(
                &r(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 1),
                1,
                false
            ),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 1,
                fua: true
            })
        );
    }

    #[test]
    fn errno_mapping_round_trips() {
        for e in [
            libc::EPERM,
            libc::EIO,
            libc::ENOMEM,
            libc::EINVAL,
            libc::ENOSPC,
            libc::EOVERFLOW,
            libc::EOPNOTSUPP,
            libc::ESHUTDOWN,
        ] {
            assert_eq!(nbd_to_errno(errno_to_nbd(e)), e);
        }
        assert_eq!(errno_to_nbd(libc::ENXIO), NBD_EIO);
        assert_eq!(nbd_to_errno(12345), libc::EIO);
    }
}

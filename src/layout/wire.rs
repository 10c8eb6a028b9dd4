//! The layout protocol's wire format: one frame per RDMA SEND, a 24-byte header and a
//! body whose shape the opcode fixes. All integers are little-endian.
//!
//! ```text
//! header           magic u32 "FLMR" | version u16 = 1 | opcode u16 | request u64
//!                  | status u32 (0, or the errno of Error) | length u32 (body bytes)
//!  1 GetRequest    offset u64 | len u64 | access u8 | align_shift u8 | path_len u16 | path
//!  2 Granted       layout u64 | addr u64 | rkey u32 | reserved u32 | len u64 | generation u64
//!  3 CommitRequest layout u64 | count u32 | reserved u32 | count × (offset u64 | len u64)
//!  4 Committed     (empty)
//!  5 ReturnRequest layout u64
//!  6 Returned      (empty)
//!  7 Recall        layout u64 | deadline_ms u64
//!  8 Available     as Granted
//!  9 Lost          layout u64 | reason u32 | reserved u32
//! 10 Error         (empty; the header's status is the errno)
//! ```
//!
//! Decoding is strict, so a frame has exactly one encoding: `length` is the body's exact
//! length, a body has no trailing bytes, reserved fields are 0, status is 0 except in
//! `Error` (where it is a positive errno). [`Frame::encode`] refuses whatever
//! [`Frame::decode`] refuses, so every frame that encodes decodes back to itself.
//! Decoding never panics, whatever the bytes.

#[cfg(test)]
mod tests;

use libc::{E2BIG, EINVAL, EIO, EPROTO};

/// Appends each value's little-endian bytes to a `Vec<u8>`.
macro_rules! put {
    ($out:expr, $($value:expr),+) => {{ $($out.extend_from_slice(&($value).to_le_bytes());)+ }};
}

/// First four bytes of every frame: `0x524D_4C46`, the bytes `"FLMR"`.
pub const MAGIC: u32 = 0x524D_4C46;
/// The protocol version this module speaks.
pub const VERSION: u16 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// Largest frame, header included.
pub const MAX_FRAME: usize = 4096;
/// Longest path in a [`Message::GetRequest`].
pub const MAX_PATH: usize = 1024;
/// Most ranges in a [`Message::CommitRequest`].
pub const MAX_RANGES: usize = 128;

/// Message names, indexed by opcode − 1.
const NAMES: [&str; 10] = [
    "GetRequest",
    "Granted",
    "CommitRequest",
    "Committed",
    "ReturnRequest",
    "Returned",
    "Recall",
    "Available",
    "Lost",
    "Error",
];
const OP_ERROR: u16 = 10;
const LONG: &str = "longer than MAX_PATH";
const MANY: &str = "more than MAX_RANGES";

/// What a peer wants to do with a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WireAccess {
    /// RDMA READ only.
    Read = 0,
    /// RDMA WRITE only.
    Write = 1,
    /// Both.
    ReadWrite = 2,
}

impl WireAccess {
    fn from_code(code: u8) -> Option<Self> {
        use WireAccess::*;
        [Read, Write, ReadWrite].into_iter().find(|a| *a as u8 == code)
    }
}

/// Why the server tells a peer that a layout is gone ([`Message::Lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum LostCode {
    /// The file was removed or truncated below the layout.
    FileGone = 1,
    /// Committing the peer's writes failed; they may not be in the file.
    CommitFailed = 2,
    /// The peer did not return the layout by the recall's deadline and was fenced.
    Revoked = 3,
    /// The server is shutting down.
    Shutdown = 4,
    /// Anything else.
    Other = 5,
    /// The server's RDMA device was removed.
    DeviceGone = 6,
}

impl LostCode {
    fn from_code(code: u32) -> Option<Self> {
        use LostCode::*;
        [FileGone, CommitFailed, Revoked, Shutdown, Other, DeviceGone]
            .into_iter()
            .find(|c| *c as u32 == code)
    }
}

/// A layout as the server describes it to a peer ([`Message::Granted`],
/// [`Message::Available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayoutDesc {
    /// The server's id of the layout; later messages about it carry this id.
    pub layout: u64,
    /// Remote address of the layout's first byte, for the peer's RDMA READ/WRITE.
    pub addr: u64,
    /// The memory window's remote key.
    pub rkey: u32,
    /// Bytes the layout covers.
    pub len: u64,
    /// Bumped each time the layout is rebuilt; `Available` carries the new one.
    pub generation: u64,
}

/// The body of a frame: what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Peer → server (1): a layout over `len` bytes of `path` from `offset`.
    GetRequest {
        /// The file, as the peer names it (1..=[`MAX_PATH`] bytes, no NUL; the server
        /// judges the rest).
        path: Vec<u8>,
        /// First byte of the range in the file.
        offset: u64,
        /// Bytes in the range.
        len: u64,
        /// What the peer will do with it.
        access: WireAccess,
        /// 0, or log2 of the alignment (9..=21: 512 bytes to 2 MiB) of every offset and
        /// length the peer promises to transfer (a layout's tail may end unaligned at its
        /// end): the server may then use a strategy that is only correct for such I/O.
        align_shift: u8,
    },
    /// Server → peer (2): the reply to `GetRequest`.
    Granted(LayoutDesc),
    /// Peer → server (3): make these written ranges durable in the file.
    CommitRequest {
        /// The layout written through.
        layout: u64,
        /// `(offset, len)` pairs relative to the layout's start: 1..=[`MAX_RANGES`]
        /// of them, each `len > 0` and `offset + len` within `u64`.
        ranges: Vec<(u64, u64)>,
    },
    /// Server → peer (4): the reply to `CommitRequest`.
    Committed,
    /// Peer → server (5): the peer is done with the layout.
    ReturnRequest {
        /// The layout returned.
        layout: u64,
    },
    /// Server → peer (6): the reply to `ReturnRequest`.
    Returned,
    /// Server → peer (7): the file's lease broke; commit and return the layout.
    Recall {
        /// The layout recalled.
        layout: u64,
        /// Milliseconds left before the server fences the layout.
        deadline_ms: u64,
    },
    /// Server → peer (8): the layout was rebuilt and may be used again.
    Available(LayoutDesc),
    /// Server → peer (9): the layout is gone for good.
    Lost {
        /// The layout lost.
        layout: u64,
        /// Why.
        reason: LostCode,
    },
    /// Either way (10): the request failed; the frame's status is the errno and its
    /// request id echoes the request it answers (0 if that could not be parsed).
    Error,
}

impl Message {
    /// The message's opcode on the wire.
    pub fn opcode(&self) -> u16 {
        match self {
            Message::GetRequest { .. } => 1,
            Message::Granted(_) => 2,
            Message::CommitRequest { .. } => 3,
            Message::Committed => 4,
            Message::ReturnRequest { .. } => 5,
            Message::Returned => 6,
            Message::Recall { .. } => 7,
            Message::Available(_) => 8,
            Message::Lost { .. } => 9,
            Message::Error => OP_ERROR,
        }
    }

    /// The message's name (its variant's), for logs and errors.
    pub fn name(&self) -> &'static str {
        opcode_name(self.opcode()).unwrap_or("?")
    }
}

/// One message with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request id: chosen by the sender of a request, echoed by its reply.
    pub request: u64,
    /// 0, except in [`Message::Error`] where it is a positive errno.
    pub status: u32,
    /// The body.
    pub message: Message,
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame ends before its header, or before the body its opcode needs.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs so far.
        need: usize,
        /// Bytes it has.
        have: usize,
    },
    /// The frame is longer than [`MAX_FRAME`].
    #[error("frame of {len} bytes is larger than the {max}-byte maximum", max = MAX_FRAME)]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("bad magic {got:#010x} (want {want:#010x}, \"FLMR\")", want = MAGIC)]
    BadMagic {
        /// What they are.
        got: u32,
    },
    /// The frame speaks another protocol version.
    #[error("protocol version {got} is not supported (this side speaks {ours})", ours = VERSION)]
    BadVersion {
        /// Its version.
        got: u16,
    },
    /// No message has this opcode.
    #[error("unknown opcode {got}")]
    UnknownOpcode {
        /// The opcode.
        got: u16,
    },
    /// The header's length is not the body's actual length.
    #[error("header declares a {declared}-byte body, the frame carries {actual} bytes after it")]
    LengthMismatch {
        /// The header's length field.
        declared: u32,
        /// Bytes after the header.
        actual: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{opcode}: bad {field}: {why}")]
    BadField {
        /// Name of the message (see [`Message::name`]).
        opcode: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl WireError {
    /// The errno to answer with in an [`Message::Error`] frame: `EPROTO` for a frame
    /// that is not a well-formed frame of this protocol, `E2BIG` for one too large,
    /// `EINVAL` for a bad field.
    pub fn errno(&self) -> i32 {
        match self {
            WireError::TooLarge { .. } => E2BIG,
            WireError::BadField { .. } => EINVAL,
            WireError::Truncated { .. }
            | WireError::BadMagic { .. }
            | WireError::BadVersion { .. }
            | WireError::UnknownOpcode { .. }
            | WireError::LengthMismatch { .. } => EPROTO,
        }
    }
}

impl Frame {
    /// A frame with status 0 (any message but [`Message::Error`]).
    pub fn new(request: u64, message: Message) -> Frame {
        Frame { request, status: 0, message }
    }

    /// An [`Message::Error`] frame answering `request` with `errno`. A negative errno
    /// (the kernel's convention) counts as its absolute value; 0 and `i32::MIN` become
    /// `EIO`, so the frame always encodes.
    pub fn error(request: u64, errno: i32) -> Frame {
        let errno = errno.checked_abs().filter(|e| *e > 0).unwrap_or(EIO);
        Frame { request, status: errno.unsigned_abs(), message: Message::Error }
    }

    /// The frame's bytes, or why the frame breaks a rule [`Frame::decode`] enforces.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let (name, opcode) = (self.message.name(), self.message.opcode());
        check_status(name, opcode, self.status)?;
        let mut body = Vec::new();
        match &self.message {
            Message::GetRequest { path, offset, len, access, align_shift } => {
                check_path(name, path)?;
                check_align(name, *align_shift)?;
                let path_len = u16::try_from(path.len()).map_err(|_| bad(name, "path", LONG))?;
                put!(body, *offset, *len, *access as u8, *align_shift, path_len);
                body.extend_from_slice(path);
            }
            Message::Granted(d) | Message::Available(d) => {
                put!(body, d.layout, d.addr, d.rkey, 0u32, d.len, d.generation);
            }
            Message::CommitRequest { layout, ranges } => {
                check_count(name, ranges.len())?;
                let count = u32::try_from(ranges.len()).map_err(|_| bad(name, "count", MANY))?;
                put!(body, *layout, count, 0u32);
                for &(offset, len) in ranges {
                    check_range(name, offset, len)?;
                    put!(body, offset, len);
                }
            }
            Message::Committed | Message::Returned | Message::Error => {}
            Message::ReturnRequest { layout } => put!(body, *layout),
            Message::Recall { layout, deadline_ms } => put!(body, *layout, *deadline_ms),
            Message::Lost { layout, reason } => put!(body, *layout, *reason as u32, 0u32),
        }
        let total = HEADER_LEN.saturating_add(body.len());
        let length = u32::try_from(body.len()).map_err(|_| WireError::TooLarge { len: total })?;
        if total > MAX_FRAME {
            return Err(WireError::TooLarge { len: total });
        }
        let mut out = Vec::with_capacity(total);
        put!(out, MAGIC, VERSION, opcode, self.request, self.status, length);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses one whole frame (exactly the bytes of one RDMA RECV). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        if bytes.len() > MAX_FRAME {
            return Err(WireError::TooLarge { len: bytes.len() });
        }
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(WireError::Truncated { need: HEADER_LEN, have: bytes.len() });
        };
        let mut h = Reader { rest: header, pos: 0, end: bytes.len() };
        let magic = h.u32()?;
        if magic != MAGIC {
            return Err(WireError::BadMagic { got: magic });
        }
        let version = h.u16()?;
        if version != VERSION {
            return Err(WireError::BadVersion { got: version });
        }
        let opcode = h.u16()?;
        let name = opcode_name(opcode).ok_or(WireError::UnknownOpcode { got: opcode })?;
        let request = h.u64()?;
        let status = h.u32()?;
        let length = h.u32()?;
        if usize::try_from(length).ok() != Some(body.len()) {
            return Err(WireError::LengthMismatch { declared: length, actual: body.len() });
        }
        check_status(name, opcode, status)?;

        let mut r = Reader { rest: body, pos: HEADER_LEN, end: bytes.len() };
        let message = match opcode {
            1 => {
                let offset = r.u64()?;
                let len = r.u64()?;
                let access =
                    WireAccess::from_code(r.u8()?).ok_or(bad(name, "access", "not 0, 1 or 2"))?;
                let align_shift = r.u8()?;
                check_align(name, align_shift)?;
                let path_len = usize::from(r.u16()?);
                if path_len > MAX_PATH {
                    return Err(bad(name, "path", LONG));
                }
                let path = r.bytes(path_len)?.to_vec();
                check_path(name, &path)?;
                Message::GetRequest { path, offset, len, access, align_shift }
            }
            2 => Message::Granted(r.desc(name)?),
            3 => {
                let layout = r.u64()?;
                let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
                zero(name, r.u32()?.into())?;
                check_count(name, count)?;
                let mut ranges = Vec::with_capacity(count);
                for _ in 0..count {
                    let (offset, len) = (r.u64()?, r.u64()?);
                    check_range(name, offset, len)?;
                    ranges.push((offset, len));
                }
                Message::CommitRequest { layout, ranges }
            }
            4 => Message::Committed,
            5 => Message::ReturnRequest { layout: r.u64()? },
            6 => Message::Returned,
            7 => Message::Recall { layout: r.u64()?, deadline_ms: r.u64()? },
            8 => Message::Available(r.desc(name)?),
            9 => {
                let layout = r.u64()?;
                let reason =
                    LostCode::from_code(r.u32()?).ok_or(bad(name, "reason", "not 1..=5"))?;
                zero(name, r.u32()?.into())?;
                Message::Lost { layout, reason }
            }
            OP_ERROR => Message::Error,
            _ => return Err(WireError::UnknownOpcode { got: opcode }),
        };
        if !r.rest.is_empty() {
            return Err(bad(name, "length", "trailing bytes after the body"));
        }
        Ok(Frame { request, status, message })
    }
}

/// The request id of a frame whose header is whole and starts with [`MAGIC`], whatever
/// else is wrong with it: a server answers a malformed frame with an `Error` echoing it.
pub fn peek_request(bytes: &[u8]) -> Option<u64> {
    let (header, _) = bytes.split_first_chunk::<HEADER_LEN>()?;
    let mut h = Reader { rest: header, pos: 0, end: bytes.len() };
    let magic = h.u32().ok()?;
    let _version_and_opcode = h.u32().ok()?;
    let request = h.u64().ok()?;
    (magic == MAGIC).then_some(request)
}

fn opcode_name(opcode: u16) -> Option<&'static str> {
    usize::from(opcode).checked_sub(1).and_then(|i| NAMES.get(i)).copied()
}

fn bad(opcode: &'static str, field: &'static str, why: &'static str) -> WireError {
    WireError::BadField { opcode, field, why }
}

fn check_status(name: &'static str, opcode: u16, status: u32) -> Result<(), WireError> {
    if opcode == OP_ERROR {
        if !i32::try_from(status).is_ok_and(|e| e > 0) {
            return Err(bad(name, "status", "must be a positive errno"));
        }
    } else if status != 0 {
        return Err(bad(name, "status", "must be 0 in any message but Error"));
    }
    Ok(())
}

/// Alignments a peer may promise: none (0), or 512 bytes to 2 MiB.
pub const ALIGN_SHIFTS: std::ops::RangeInclusive<u8> = 9..=21;

fn check_align(name: &'static str, shift: u8) -> Result<(), WireError> {
    if shift == 0 || ALIGN_SHIFTS.contains(&shift) {
        Ok(())
    } else {
        Err(bad(name, "align_shift", "not 0 or 9..=21"))
    }
}

fn zero(name: &'static str, reserved: u64) -> Result<(), WireError> {
    if reserved == 0 { Ok(()) } else { Err(bad(name, "reserved", "must be 0")) }
}

fn check_path(name: &'static str, path: &[u8]) -> Result<(), WireError> {
    if path.is_empty() {
        Err(bad(name, "path", "empty"))
    } else if path.len() > MAX_PATH {
        Err(bad(name, "path", LONG))
    } else if path.contains(&0) {
        Err(bad(name, "path", "contains a NUL byte"))
    } else {
        Ok(())
    }
}

fn check_count(name: &'static str, count: usize) -> Result<(), WireError> {
    match count {
        0 => Err(bad(name, "count", "no ranges")),
        c if c > MAX_RANGES => Err(bad(name, "count", MANY)),
        _ => Ok(()),
    }
}

fn check_range(name: &'static str, offset: u64, len: u64) -> Result<(), WireError> {
    if len == 0 {
        Err(bad(name, "ranges", "a range has length 0"))
    } else if offset.checked_add(len).is_none() {
        Err(bad(name, "ranges", "offset + len overflows u64"))
    } else {
        Ok(())
    }
}

/// Defines `Reader` methods named after and returning each integer type.
macro_rules! le_readers {
    ($($int:ident),+) => {$(
        fn $int(&mut self) -> Result<$int, WireError> {
            self.array().map($int::from_le_bytes)
        }
    )+};
}

/// Reads little-endian fields off the front of a slice; running out is `Truncated`,
/// counted in the frame's bytes (`pos` is where `rest` starts, `end` the frame's length).
struct Reader<'a> {
    rest: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn short(&self, n: usize) -> WireError {
        WireError::Truncated { need: self.pos.saturating_add(n), have: self.end }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.rest.split_at_checked(n).ok_or_else(|| self.short(n))?;
        self.rest = rest;
        self.pos = self.pos.saturating_add(n);
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let head = self.bytes(N)?;
        <[u8; N]>::try_from(head).map_err(|_| self.short(N)) // `bytes(N)` gave N bytes
    }

    le_readers!(u8, u16, u32, u64);

    fn desc(&mut self, name: &'static str) -> Result<LayoutDesc, WireError> {
        let (layout, addr, rkey) = (self.u64()?, self.u64()?, self.u32()?);
        zero(name, self.u32()?.into())?;
        Ok(LayoutDesc { layout, addr, rkey, len: self.u64()?, generation: self.u64()? })
    }
}

//! Tests of the layout wire format: the bytes are pinned, every rejection rule has its
//! error, and property tests feed the decoder hostile input.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

const DESC: LayoutDesc = LayoutDesc {
    layout: 0x1111_2222_3333_4444,
    addr: 0x7f00_dead_b000,
    rkey: 0xabcd_0123,
    len: 1 << 20,
    generation: 3,
};

/// One frame of each message kind, in opcode order.
fn one_of_each() -> Vec<Frame> {
    let get = Message::GetRequest {
        path: b"/data/f".to_vec(),
        offset: 4096,
        len: 8192,
        access: WireAccess::ReadWrite,
        align_shift: 12,
    };
    let commit = Message::CommitRequest { layout: 7, ranges: vec![(0, 1), (4096, 100)] };
    let mut frames: Vec<Frame> = [
        get,
        Message::Granted(DESC),
        commit,
        Message::Committed,
        Message::ReturnRequest { layout: 7 },
        Message::Returned,
        Message::Recall { layout: 7, deadline_ms: 1500 },
        Message::Available(LayoutDesc { generation: 4, ..DESC }),
        Message::Lost { layout: 7, reason: LostCode::Revoked },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, m)| Frame::new(100 + i as u64, m))
    .collect();
    frames.push(Frame::error(42, libc::ENOENT));
    frames
}

/// A frame with a correct header (length included) around `body`.
fn raw(opcode: u16, request: u64, status: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&opcode.to_le_bytes());
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn enc(message: Message) -> Vec<u8> {
    Frame::new(1, message).encode().unwrap()
}

fn err(bytes: &[u8]) -> WireError {
    Frame::decode(bytes).unwrap_err()
}

#[track_caller]
fn assert_bad(e: WireError, want_opcode: &str, want_field: &str) {
    match e {
        WireError::BadField { opcode, field, .. }
            if opcode == want_opcode && field == want_field => {}
        other => panic!("want BadField {{ {want_opcode}, {want_field} }}, got {other:?}"),
    }
}

/// A GetRequest body: offset 1, len 2, then the access code, alignment shift, path_len
/// and path given.
fn get_body(access: u8, align_shift: u8, path_len: u16, path: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    body.extend_from_slice(&[access, align_shift]);
    body.extend_from_slice(&path_len.to_le_bytes());
    body.extend_from_slice(path);
    body
}

/// A CommitRequest body for layout 9 with the count, reserved field and ranges given.
fn commit_body(count: u32, reserved: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&9u64.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&reserved.to_le_bytes());
    for (offset, len) in ranges {
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
    }
    body
}

// ---- round trips and pinned bytes ----

#[test]
fn every_message_kind_round_trips() {
    let frames = one_of_each();
    let opcodes: Vec<u16> = frames.iter().map(|f| f.message.opcode()).collect();
    assert_eq!(opcodes, (1..=10).collect::<Vec<u16>>());
    for frame in frames {
        let bytes = frame.encode().unwrap();
        assert_eq!(Frame::decode(&bytes), Ok(frame.clone()), "{}", frame.message.name());
        assert_eq!(peek_request(&bytes), Some(frame.request));
    }
}

#[test]
fn names_follow_the_variants() {
    let names: Vec<&str> = one_of_each().iter().map(|f| f.message.name()).collect();
    assert_eq!(names, NAMES);
}

#[test]
fn header_bytes_are_pinned() {
    let bytes = Frame::new(0x0102_0304_0506_0708, Message::Committed).encode().unwrap();
    #[rustfmt::skip]
    let want = [
        b'F', b'L', b'M', b'R', // magic 0x524D_4C46
        1, 0,                   // version
        4, 0,                   // opcode: Committed
        8, 7, 6, 5, 4, 3, 2, 1, // request
        0, 0, 0, 0,             // status
        0, 0, 0, 0,             // length
    ];
    assert_eq!(bytes, want);
    assert_eq!(MAGIC.to_le_bytes(), *b"FLMR");

    let bytes = Frame::error(9, libc::ENOENT).encode().unwrap();
    assert_eq!(bytes[6..8], [10, 0]);
    assert_eq!(bytes[16..20], [2, 0, 0, 0]); // ENOENT
}

#[test]
fn get_request_bytes_are_pinned() {
    let frame = Frame::new(
        7,
        Message::GetRequest {
            path: b"/a".to_vec(),
            offset: 0x1000,
            len: 0x2_0000_0000,
            access: WireAccess::Write,
            align_shift: 0,
        },
    );
    #[rustfmt::skip]
    let want = [
        b'F', b'L', b'M', b'R', 1, 0, 1, 0, // magic, version, opcode 1
        7, 0, 0, 0, 0, 0, 0, 0,             // request
        0, 0, 0, 0, 22, 0, 0, 0,            // status, length = 20 + 2
        0, 0x10, 0, 0, 0, 0, 0, 0,          // offset
        0, 0, 0, 0, 2, 0, 0, 0,             // len
        1, 0,                               // access Write, reserved
        2, 0,                               // path_len
        b'/', b'a',                         // path
    ];
    let bytes = frame.encode().unwrap();
    assert_eq!(bytes, want);
    assert_eq!(Frame::decode(&want), Ok(frame));
}

#[test]
fn body_layouts_are_pinned() {
    let granted =
        enc(Message::Granted(LayoutDesc { layout: 1, addr: 2, rkey: 3, len: 4, generation: 5 }));
    #[rustfmt::skip]
    let want: [u8; 40] = [
        1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, // layout, addr
        3, 0, 0, 0, 0, 0, 0, 0,                         // rkey, reserved
        4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, // len, generation
    ];
    assert_eq!(granted[HEADER_LEN..], want);

    let commit = enc(Message::CommitRequest { layout: 9, ranges: vec![(16, 32)] });
    assert_eq!(commit[HEADER_LEN..], commit_body(1, 0, &[(16, 32)]));

    let lost = enc(Message::Lost { layout: 9, reason: LostCode::Shutdown });
    assert_eq!(lost[HEADER_LEN..], [9, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);

    let recall = enc(Message::Recall { layout: 9, deadline_ms: 258 });
    assert_eq!(recall[HEADER_LEN..], [9, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);

    let codes: Vec<u32> = [
        LostCode::FileGone,
        LostCode::CommitFailed,
        LostCode::Revoked,
        LostCode::Shutdown,
        LostCode::Other,
        LostCode::DeviceGone,
    ]
    .into_iter()
    .map(|c| {
        let bytes = enc(Message::Lost { layout: 0, reason: c });
        u32::from_le_bytes(bytes[HEADER_LEN + 8..HEADER_LEN + 12].try_into().unwrap())
    })
    .collect();
    assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn limits_are_accepted() {
    let path = vec![b'x'; MAX_PATH];
    let get = Message::GetRequest {
        path,
        offset: u64::MAX,
        len: u64::MAX,
        access: WireAccess::Read,
        align_shift: 21,
    };
    let ranges = vec![(u64::MAX - 1, 1); MAX_RANGES];
    let commit = Message::CommitRequest { layout: u64::MAX, ranges };
    for frame in [Frame::new(u64::MAX, get), Frame::new(0, commit), Frame::error(0, i32::MAX)] {
        let bytes = frame.encode().unwrap();
        assert!(bytes.len() <= MAX_FRAME);
        assert_eq!(Frame::decode(&bytes), Ok(frame));
    }
}

// ---- rejections: header ----

#[test]
fn too_large() {
    assert_eq!(err(&[0; MAX_FRAME + 1]), WireError::TooLarge { len: MAX_FRAME + 1 });
    let huge = raw(4, 1, 0, &[0; MAX_FRAME + 1 - HEADER_LEN]);
    assert_eq!(err(&huge), WireError::TooLarge { len: MAX_FRAME + 1 });
    // Exactly MAX_FRAME is not too large (this one has trailing bytes instead).
    assert_bad(err(&raw(4, 1, 0, &[0; MAX_FRAME - HEADER_LEN])), "Committed", "length");
}

#[test]
fn truncated_header() {
    let bytes = enc(Message::Committed);
    for n in 0..HEADER_LEN {
        assert_eq!(err(&bytes[..n]), WireError::Truncated { need: HEADER_LEN, have: n });
    }
}

#[test]
fn truncated_body() {
    let short_desc = raw(2, 1, 0, &[0; 39]);
    assert_eq!(err(&short_desc), WireError::Truncated { need: 64, have: 63 });
    let short_path = raw(1, 1, 0, &get_body(0, 0, 5, b"abc"));
    assert_eq!(err(&short_path), WireError::Truncated { need: 24 + 20 + 5, have: 24 + 23 });
    let short_ranges = raw(3, 1, 0, &commit_body(2, 0, &[(0, 1)]));
    assert_eq!(err(&short_ranges), WireError::Truncated { need: 24 + 40, have: 24 + 32 });
    assert_eq!(err(&raw(5, 1, 0, &[])), WireError::Truncated { need: 32, have: 24 });
}

#[test]
fn bad_magic() {
    let mut bytes = enc(Message::Returned);
    bytes[0] = b'G';
    assert_eq!(err(&bytes), WireError::BadMagic { got: 0x524D_4C47 });
    assert_eq!(err(&[0; HEADER_LEN]), WireError::BadMagic { got: 0 });
}

#[test]
fn bad_version() {
    for version in [0u16, 2, u16::MAX] {
        let mut bytes = enc(Message::Returned);
        bytes[4..6].copy_from_slice(&version.to_le_bytes());
        assert_eq!(err(&bytes), WireError::BadVersion { got: version });
    }
}

#[test]
fn unknown_opcode() {
    for opcode in [0u16, 11, 12, 0x0100, u16::MAX] {
        assert_eq!(err(&raw(opcode, 1, 0, &[])), WireError::UnknownOpcode { got: opcode });
    }
}

#[test]
fn length_mismatch() {
    let bytes = enc(Message::ReturnRequest { layout: 5 });
    for declared in [0u32, 7, 9, 4072, u32::MAX] {
        let mut b = bytes.clone();
        b[20..24].copy_from_slice(&declared.to_le_bytes());
        assert_eq!(err(&b), WireError::LengthMismatch { declared, actual: 8 });
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(err(&longer), WireError::LengthMismatch { declared: 8, actual: 9 });
    assert_eq!(err(&bytes[..31]), WireError::LengthMismatch { declared: 8, actual: 7 });
}

#[test]
fn status_must_be_zero_except_in_error() {
    for frame in one_of_each().into_iter().filter(|f| f.message != Message::Error) {
        let name = frame.message.name();
        let mut bytes = frame.encode().unwrap();
        bytes[16..20].copy_from_slice(&5u32.to_le_bytes());
        assert_bad(err(&bytes), name, "status");
        assert_bad(Frame { status: 5, ..frame }.encode().unwrap_err(), name, "status");
    }
}

#[test]
fn error_status_must_be_a_positive_errno() {
    for status in [0u32, 0x8000_0000, u32::MAX] {
        assert_bad(err(&raw(10, 1, status, &[])), "Error", "status");
        let frame = Frame { request: 1, status, message: Message::Error };
        assert_bad(frame.encode().unwrap_err(), "Error", "status");
    }
}

// ---- rejections: bodies ----

#[test]
fn alignment_shifts_are_none_or_512_bytes_to_2_mib() {
    for bad in [1u8, 8, 22, 255] {
        assert_bad(err(&raw(1, 1, 0, &get_body(0, bad, 1, b"a"))), "GetRequest", "align_shift");
        let get = Message::GetRequest {
            path: b"a".to_vec(),
            offset: 0,
            len: 1,
            access: WireAccess::Read,
            align_shift: bad,
        };
        assert_bad(Frame::new(1, get).encode().unwrap_err(), "GetRequest", "align_shift");
    }
    for good in [0u8, 9, 12, 21] {
        let frame = Frame::decode(&raw(1, 1, 0, &get_body(0, good, 1, b"a"))).unwrap();
        assert!(
            matches!(frame.message, Message::GetRequest { align_shift, .. } if align_shift == good)
        );
    }
}

#[test]
fn reserved_fields_must_be_zero() {
    for (opcode, name) in [(2, "Granted"), (8, "Available")] {
        let mut bytes = enc(Message::Granted(DESC));
        bytes[6..8].copy_from_slice(&u16::to_le_bytes(opcode));
        assert!(Frame::decode(&bytes).is_ok());
        bytes[HEADER_LEN + 20] = 1;
        assert_bad(err(&bytes), name, "reserved");
    }
    assert_bad(
        err(&raw(3, 1, 0, &commit_body(1, 1 << 31, &[(0, 1)]))),
        "CommitRequest",
        "reserved",
    );
    let mut lost = enc(Message::Lost { layout: 1, reason: LostCode::Other });
    lost[HEADER_LEN + 15] = 0x80;
    assert_bad(err(&lost), "Lost", "reserved");
}

#[test]
fn access_must_be_known() {
    for access in [3u8, 4, 0xff] {
        assert_bad(err(&raw(1, 1, 0, &get_body(access, 0, 1, b"a"))), "GetRequest", "access");
    }
    for (code, access) in
        [(0, WireAccess::Read), (1, WireAccess::Write), (2, WireAccess::ReadWrite)]
    {
        let frame = Frame::decode(&raw(1, 1, 0, &get_body(code, 0, 1, b"a"))).unwrap();
        assert!(matches!(frame.message, Message::GetRequest { access: a, .. } if a == access));
    }
}

/// Decoding `body` fails with BadField { GetRequest, path } and so does encoding `path`.
#[track_caller]
fn assert_bad_path(body: Vec<u8>, path: Vec<u8>) {
    assert_bad(err(&raw(1, 1, 0, &body)), "GetRequest", "path");
    let get =
        Message::GetRequest { path, offset: 1, len: 2, access: WireAccess::Read, align_shift: 0 };
    assert_bad(Frame::new(1, get).encode().unwrap_err(), "GetRequest", "path");
}

#[test]
fn path_must_be_1_to_max_path_bytes_without_nul() {
    assert_bad_path(get_body(0, 0, 0, b""), vec![]);
    let long = vec![b'x'; MAX_PATH + 1];
    assert_bad_path(get_body(0, 0, MAX_PATH as u16 + 1, &long), long);
    // A too-long path_len is refused before the bytes are looked for.
    assert_bad(err(&raw(1, 1, 0, &get_body(0, 0, u16::MAX, b""))), "GetRequest", "path");
    for nul in [&b"\0"[..], b"a\0", b"\0a", b"/x/\0/y"] {
        assert_bad_path(get_body(0, 0, nul.len() as u16, nul), nul.to_vec());
    }
    // `..` and `/` are the server's business, not the wire's.
    let dots = Frame::decode(&raw(1, 1, 0, &get_body(0, 0, 5, b"../..")));
    assert!(matches!(dots, Ok(Frame { message: Message::GetRequest { .. }, .. })));
}

/// Decoding `body` fails with BadField { CommitRequest, `field` }, and so does encoding
/// `ranges`.
#[track_caller]
fn assert_bad_ranges(body: Vec<u8>, ranges: Vec<(u64, u64)>, field: &str) {
    assert_bad(err(&raw(3, 1, 0, &body)), "CommitRequest", field);
    let commit = Message::CommitRequest { layout: 9, ranges };
    assert_bad(Frame::new(1, commit).encode().unwrap_err(), "CommitRequest", field);
}

#[test]
fn commit_count_must_be_1_to_max_ranges() {
    assert_bad_ranges(commit_body(0, 0, &[]), vec![], "count");
    let many = vec![(0, 1); MAX_RANGES + 1];
    assert_bad_ranges(commit_body(MAX_RANGES as u32 + 1, 0, &many), many, "count");
    // A huge count is refused before the ranges are looked for.
    assert_bad(err(&raw(3, 1, 0, &commit_body(u32::MAX, 0, &[]))), "CommitRequest", "count");
}

#[test]
fn commit_ranges_must_be_non_empty_and_not_overflow() {
    let zero = vec![(0, 1), (5, 0)];
    assert_bad_ranges(commit_body(2, 0, &zero), zero, "ranges");
    for overflow in [(u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX), (1 << 63, 1 << 63)] {
        assert_bad_ranges(commit_body(1, 0, &[overflow]), vec![overflow], "ranges");
    }
    let edge = vec![(u64::MAX - 1, 1), (0, u64::MAX)];
    assert!(Frame::decode(&raw(3, 1, 0, &commit_body(2, 0, &edge))).is_ok());
}

#[test]
fn lost_reason_must_be_known() {
    for reason in [0u32, 7, 0x100, u32::MAX] {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&reason.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        assert_bad(err(&raw(9, 1, 0, &body)), "Lost", "reason");
    }
}

#[test]
fn bodies_have_no_trailing_bytes() {
    for frame in one_of_each() {
        let name = frame.message.name();
        let bytes = frame.encode().unwrap();
        let mut body = bytes[HEADER_LEN..].to_vec();
        body.push(0);
        let longer = raw(frame.message.opcode(), frame.request, frame.status, &body);
        assert_bad(err(&longer), name, "length");
    }
}

// ---- errors, helpers ----

#[test]
fn errno_and_display() {
    let cases = [
        (WireError::Truncated { need: 24, have: 3 }, libc::EPROTO, "need 24 bytes, have 3"),
        (WireError::TooLarge { len: 5000 }, libc::E2BIG, "5000 bytes"),
        (WireError::BadMagic { got: 0x1234 }, libc::EPROTO, "0x00001234"),
        (WireError::BadVersion { got: 9 }, libc::EPROTO, "version 9"),
        (WireError::UnknownOpcode { got: 77 }, libc::EPROTO, "opcode 77"),
        (WireError::LengthMismatch { declared: 8, actual: 9 }, libc::EPROTO, "8-byte body"),
        (super::bad("Lost", "reason", "not 1..=5"), libc::EINVAL, "Lost: bad reason: not 1..=5"),
    ];
    for (e, errno, text) in cases {
        assert_eq!(e.errno(), errno, "{e:?}");
        assert!(e.to_string().contains(text), "{e} lacks {text:?}");
    }
}

#[test]
fn error_frames_always_encode() {
    let status = |errno| Frame::error(3, errno).status;
    assert_eq!(status(libc::EINVAL), libc::EINVAL as u32);
    assert_eq!(status(-libc::EINVAL), libc::EINVAL as u32);
    assert_eq!(status(0), libc::EIO as u32);
    assert_eq!(status(i32::MIN), libc::EIO as u32);
    assert_eq!(status(i32::MAX), i32::MAX as u32);
    for errno in [0, 1, -1, i32::MIN, i32::MAX, -i32::MAX] {
        let frame = Frame::error(3, errno);
        assert_eq!(Frame::decode(&frame.encode().unwrap()), Ok(frame));
    }
}

#[test]
fn peek_request_needs_a_whole_header_with_magic() {
    let bytes = enc(Message::ReturnRequest { layout: 5 });
    assert_eq!(peek_request(&bytes), Some(1));
    assert_eq!(peek_request(&bytes[..HEADER_LEN]), Some(1)); // body missing: still peeks
    assert_eq!(peek_request(&bytes[..HEADER_LEN - 1]), None);
    assert_eq!(peek_request(&[]), None);
    let mut bad_magic = bytes.clone();
    bad_magic[3] = 0;
    assert_eq!(peek_request(&bad_magic), None);
    // Malformed beyond the magic: the id is still there to echo.
    let malformed = raw(99, 0xfeed, 7, &[1, 2, 3]);
    assert!(Frame::decode(&malformed).is_err());
    assert_eq!(peek_request(&malformed), Some(0xfeed));
}

// ---- property tests: hostile input ----

fn access() -> impl Strategy<Value = WireAccess> {
    prop_oneof![Just(WireAccess::Read), Just(WireAccess::Write), Just(WireAccess::ReadWrite)]
}

fn lost_code() -> impl Strategy<Value = LostCode> {
    prop_oneof![
        Just(LostCode::FileGone),
        Just(LostCode::CommitFailed),
        Just(LostCode::Revoked),
        Just(LostCode::Shutdown),
        Just(LostCode::Other),
        Just(LostCode::DeviceGone),
    ]
}

fn desc() -> impl Strategy<Value = LayoutDesc> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(layout, addr, rkey, len, generation)| LayoutDesc { layout, addr, rkey, len, generation },
    )
}

/// A valid range: small ones and ones anywhere up to the end of u64.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0u64..1 << 24, 1u64..1 << 24),
        (0..u64::MAX, any::<u64>()).prop_map(|(offset, l)| (offset, 1 + l % (u64::MAX - offset))),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let shift = prop_oneof![Just(0u8), 9u8..=21];
    let get = (vec(1u8..=255, 1..=MAX_PATH), any::<u64>(), any::<u64>(), access(), shift).prop_map(
        |(path, offset, len, access, align_shift)| Message::GetRequest {
            path,
            offset,
            len,
            access,
            align_shift,
        },
    );
    let commit = (any::<u64>(), vec(range(), 1..=MAX_RANGES))
        .prop_map(|(layout, ranges)| Message::CommitRequest { layout, ranges });
    prop_oneof![
        get,
        desc().prop_map(Message::Granted),
        commit,
        Just(Message::Committed),
        any::<u64>().prop_map(|layout| Message::ReturnRequest { layout }),
        Just(Message::Returned),
        (any::<u64>(), any::<u64>())
            .prop_map(|(layout, deadline_ms)| Message::Recall { layout, deadline_ms }),
        desc().prop_map(Message::Available),
        (any::<u64>(), lost_code()).prop_map(|(layout, reason)| Message::Lost { layout, reason }),
    ]
}

/// Any valid frame: a message with status 0, or an Error with a positive errno.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        9 => (any::<u64>(), message()).prop_map(|(request, message)| Frame::new(request, message)),
        1 => (any::<u64>(), 1..=i32::MAX).prop_map(|(request, errno)| Frame::error(request, errno)),
    ]
}

/// A frame whose header passes the magic and version checks, with any opcode (a few
/// unknown), any status (often 0), a body of junk, and a length that is usually right.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![Just(0u32), any::<u32>()];
    let length = prop_oneof![9 => Just(None), 1 => any::<u32>().prop_map(Some)];
    (0u16..=12, any::<u64>(), status, vec(any::<u8>(), 0..2200), length).prop_map(
        |(opcode, request, status, body, length)| {
            let mut bytes = raw(opcode, request, status, &body);
            if let Some(length) = length {
                bytes[20..24].copy_from_slice(&length.to_le_bytes());
            }
            bytes
        },
    )
}

/// Whatever `bytes` are, decoding returns (no panic); a frame it accepts has exactly
/// these bytes as its encoding, and peek_request sees its id.
fn decode_is_total_and_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    let peeked = peek_request(bytes);
    match Frame::decode(bytes) {
        Ok(frame) => {
            let encoded = frame.encode();
            prop_assert_eq!(encoded.as_deref(), Ok(bytes));
            prop_assert_eq!(peeked, Some(frame.request));
        }
        Err(e) => prop_assert!(e.errno() > 0 && !e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..=MAX_FRAME + 64)) {
        decode_is_total_and_canonical(&bytes)?;
    }

    #[test]
    fn junk_behind_a_good_header_never_panics(bytes in hostile_frame()) {
        decode_is_total_and_canonical(&bytes)?;
    }

    #[test]
    fn valid_frames_round_trip(frame in frame()) {
        let bytes = frame.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_FRAME);
        prop_assert_eq!(peek_request(&bytes), Some(frame.request));
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
    }

    #[test]
    fn every_truncation_errors(frame in frame()) {
        let bytes = frame.encode().unwrap();
        for n in 0..bytes.len() {
            let e = Frame::decode(&bytes[..n]).unwrap_err();
            if n < HEADER_LEN {
                prop_assert_eq!(e, WireError::Truncated { need: HEADER_LEN, have: n });
            } else {
                let is_mismatch = matches!(e, WireError::LengthMismatch { .. });
                prop_assert!(is_mismatch, "{:?}", e);
            }
        }
    }

    #[test]
    fn appended_bytes_error(frame in frame(), extra in vec(any::<u8>(), 1..64)) {
        let mut bytes = frame.encode().unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert!(Frame::decode(&bytes).is_err());
    }

    #[test]
    fn every_single_byte_flip_is_canonical_or_errors(frame in frame(), mask in 1u8..=255) {
        let bytes = frame.encode().unwrap();
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= mask;
            decode_is_total_and_canonical(&flipped)?;
        }
    }
}

//! The C ABI called from Rust as C would: NULLs, errors and messages, the panic guard,
//! addresses, grants, and the core driven through it with microsecond times.

use super::*;

fn last_error() -> String {
    let mut buf = vec![0 as c_char; 256];
    let needed = ud_last_error_message(buf.as_mut_ptr(), buf.len());
    assert!(needed >= 1);
    // SAFETY: copy_out NUL-terminated it within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn constants_in_the_header_are_the_crates() {
    assert_eq!(UD_MAX_CONTROL_LEN, MAX_CONTROL_LEN);
    let version = format!("{UD_VERSION_MAJOR}.{UD_VERSION_MINOR}.{UD_VERSION_PATCH}");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(ud_version()) };
    assert_eq!(v.to_str(), Ok(version.as_str()));
}

#[test]
fn nulls_are_refused_with_a_message_and_nothing_panics_across() {
    assert_eq!(
        ud_query_new(std::ptr::null(), std::ptr::null_mut()),
        UdStatus::InvalidArgument
    );
    assert!(last_error().contains("resource_type"), "{}", last_error());
    let mut q: *mut UdQuery = std::ptr::null_mut();
    assert_eq!(ud_query_new(cs("echo").as_ptr(), &mut q), UdStatus::Ok);
    assert_eq!(
        ud_query_label(q, cs("zone").as_ptr(), std::ptr::null()),
        UdStatus::InvalidArgument
    );
    assert!(last_error().contains("value"));
    assert_eq!(ud_query_ticket(q, cs("jwt").as_ptr()), UdStatus::Ok);
    let mut line = vec![0 as c_char; 128];
    let needed = ud_query_line(q, line.as_mut_ptr(), line.len());
    // SAFETY: NUL-terminated by copy_out.
    let text = unsafe { CStr::from_ptr(line.as_ptr()) }.to_str().unwrap();
    assert_eq!(text, r#"{"resourceType":"echo","ticket":"jwt"}"#);
    assert_eq!(needed, text.len() + 1);
    // Truncation keeps the NUL and still says what is needed.
    let mut small = [0 as c_char; 4];
    assert_eq!(ud_query_line(q, small.as_mut_ptr(), 4), needed);
    assert_eq!(small[3], 0);
    ud_query_free(q);
    ud_query_free(std::ptr::null_mut());

    // A panic inside becomes a status and a message.
    let status = guard(|| panic!("boom"));
    assert_eq!(status, UdStatus::Panic);
    assert!(last_error().contains("panic"));
}

#[test]
fn addresses_round_trip_and_bad_ones_are_named() {
    let mut a = UdAddr {
        family: 0,
        port: 0,
        ip: [0; 16],
    };
    assert_eq!(
        ud_addr_parse(cs("[::1]:7777").as_ptr(), &mut a),
        UdStatus::Ok
    );
    assert_eq!((a.family, a.port, a.ip[15]), (6, 7777, 1));
    let mut buf = [0 as c_char; 64];
    ud_addr_format(&a, buf.as_mut_ptr(), buf.len());
    // SAFETY: NUL-terminated by copy_out.
    assert_eq!(
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str(),
        Ok("[::1]:7777")
    );
    assert_eq!(
        ud_addr_parse(cs("localhost:1").as_ptr(), &mut a),
        UdStatus::InvalidArgument
    );
    assert!(last_error().contains("localhost:1"));
    a.family = 5;
    assert_eq!(ud_addr_format(&a, buf.as_mut_ptr(), buf.len()), 0);
}

#[test]
fn grants_are_parsed_and_errors_carry_the_directors_code() {
    let mut g: *mut UdGrant = std::ptr::null_mut();
    let line = cs(
        r#"{"token":"tok-1","ttlSeconds":30,"resumeSeconds":600,"target":{"namespace":"n","name":"a"}}"#,
    );
    assert_eq!(ud_grant_parse(line.as_ptr(), &mut g), UdStatus::Ok);
    // SAFETY: the grant's strings live as long as the grant.
    let token = unsafe { CStr::from_ptr(ud_grant_token(g)) };
    assert_eq!(token.to_str(), Ok("tok-1"));
    assert_eq!(
        (
            ud_grant_ttl_seconds(g),
            ud_grant_resume_seconds(g),
            ud_grant_reopen_seconds(g)
        ),
        (30, 600, 600)
    );
    // SAFETY: as above.
    let name = unsafe { CStr::from_ptr(ud_grant_target_name(g)) };
    assert_eq!(name.to_str(), Ok("a"));
    ud_grant_free(g);
    assert!(ud_grant_token(std::ptr::null()).is_null());

    let mut g: *mut UdGrant = std::ptr::null_mut();
    let refused = cs(r#"{"error":{"code":"unauthorized","message":"ticket expired"}}"#);
    assert_eq!(ud_grant_parse(refused.as_ptr(), &mut g), UdStatus::Refused);
    assert_eq!(last_error(), "unauthorized: ticket expired");
    assert!(g.is_null(), "no handle on failure");
    assert_eq!(
        ud_grant_parse(cs("nope").as_ptr(), &mut g),
        UdStatus::Garbled
    );
}

#[test]
fn the_core_through_the_abi_answers_a_challenge_and_resumes_on_the_callers_clock() {
    let mut director = UdAddr {
        family: 0,
        port: 0,
        ip: [0; 16],
    };
    ud_addr_parse(cs("127.0.0.1:7777").as_ptr(), &mut director);
    let mut cfg = std::mem::MaybeUninit::<UdConfig>::uninit();
    assert_eq!(ud_config_default(cfg.as_mut_ptr()), UdStatus::Ok);
    // SAFETY: ud_config_default initialised it.
    let cfg = unsafe { cfg.assume_init() };
    assert_eq!((cfg.silence_ms, cfg.failover_after_ms), (500, 3000));
    let mut core: *mut UdCore = std::ptr::null_mut();
    let token = cs("550e8400-e29b-41d4-a716-446655440000");
    let t0 = 1_000_000_000u64;
    assert_eq!(
        ud_core_new(&director, 1, token.as_ptr(), 30, &cfg, t0, &mut core),
        UdStatus::Ok
    );
    let mut buf = [0u8; UD_MAX_CONTROL_LEN];
    let mut t = UdTransmit {
        destination: director,
        len: 0,
        kind: UdTransmitKind::Ping,
    };
    let poll = |core, now, t: &mut UdTransmit, buf: &mut [u8]| {
        assert_eq!(
            ud_core_poll_transmit(core, now, buf.as_mut_ptr(), buf.len(), t),
            UdStatus::Ok
        );
        t.len
    };
    assert_eq!(poll(core, t0, &mut t, &mut buf), 36);
    assert_eq!(t.kind, UdTransmitKind::Token);
    assert_eq!(t.destination, director);
    assert_eq!(poll(core, t0, &mut t, &mut buf), 0, "nothing else");

    let mut challenge = frames::DEFAULT_MAGIC.to_vec();
    challenge.push(1);
    challenge.extend_from_slice(&[0xAB; 16]);
    let mut kind = UdIncoming::Dropped;
    assert_eq!(
        ud_core_handle_datagram(
            core,
            t0,
            &director,
            challenge.as_ptr(),
            challenge.len(),
            &mut kind
        ),
        UdStatus::Ok
    );
    assert_eq!(kind, UdIncoming::Challenge);
    let n = poll(core, t0, &mut t, &mut buf);
    assert_eq!(t.kind, UdTransmitKind::Response);
    assert_eq!(
        &buf[9..10 + 16],
        [[2u8].as_slice(), &[0xAB; 16]].concat().as_slice()
    );
    assert_eq!(&buf[26..n], token.as_bytes());

    let mut at = 0;
    assert_eq!(ud_core_poll_timeout(core, &mut at), UdStatus::Ok);
    assert_eq!(
        at,
        t0 + 500_000,
        "the resume rule, in the caller's microseconds"
    );
    assert_eq!(ud_core_handle_timeout(core, at), UdStatus::Ok);
    poll(core, at, &mut t, &mut buf);
    assert_eq!(t.kind, UdTransmitKind::Resume);

    let mut small = [0u8; 8];
    assert_eq!(
        ud_core_poll_transmit(core, at, small.as_mut_ptr(), small.len(), &mut t),
        UdStatus::BufferTooSmall
    );
    let mut stats = UdStats::default();
    ud_core_stats(core, &mut stats);
    assert_eq!((stats.resumes, stats.challenges_answered), (1, 1));
    assert_eq!(
        ud_core_switch(core, at, cs("bad token").as_ptr(), 30),
        UdStatus::InvalidArgument
    );
    assert!(last_error().contains("printable ASCII"));
    ud_core_free(core);
}

use super::*;

fn rrq(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = OP_RRQ.to_be_bytes().to_vec();
    for field in [filename, "octet"].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

fn data_indices(step: &Step) -> Vec<u64> {
    match step {
        Step::Send(v) => v
            .iter()
            .filter_map(|s| match s {
                Datagram::Data { index, .. } => Some(*index),
                Datagram::Oack => None,
            })
            .collect(),
        other => panic!("expected packets, got {other:?}"),
    }
}

fn session(len: u64, options: &[(&str, &str)]) -> (Session, Step, Negotiated) {
    let opts: Vec<(String, String)> = options.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let n = negotiate(&opts, len, &Limits::default());
    let (s, step) = Session::start(&n, len, &Limits::default());
    (s, step, n)
}

#[test]
fn requests_parse_with_options_case_insensitively() {
    let r = parse_request(&rrq("undionly.kpxe", &[("BLKSIZE", "1468"), ("tsize", "0")])).unwrap();
    assert_eq!((r.write, r.filename.as_str(), r.mode.as_str()), (false, "undionly.kpxe", "octet"));
    assert_eq!(r.options, vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())]);
    for bad in
        [&b"\x00"[..], b"\x00\x01file", b"\x00\x01\x00octet\x00", b"\x00\x01f\x00octet\x00blksize\x00", b"\x00\x03xx"]
    {
        assert!(parse_request(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn negotiation_caps_values_and_answers_only_known_options() {
    let (_, first, n) = session(3000, &[("blksize", "9000"), ("windowsize", "500"), ("tsize", "0"), ("colour", "red")]);
    assert_eq!((n.blksize, n.windowsize), (1468, 64));
    assert_eq!(first, Step::Send(vec![Datagram::Oack]));
    let oack = n.oack.unwrap();
    assert_eq!(&oack[..2], &OP_OACK.to_be_bytes());
    assert_eq!(&oack[2..], b"blksize\x001468\x00windowsize\x0064\x00tsize\x003000\x00");
    // No options: no OACK, straight to block 1 at 512 bytes.
    let (_, first, n) = session(3000, &[]);
    assert!(n.oack.is_none());
    assert_eq!(first, Step::Send(vec![Datagram::Data { index: 1, offset: 0, len: 512 }]));
}

#[test]
fn lockstep_transfer_ends_with_a_short_block_even_when_empty() {
    let (mut s, first, _) = session(1024, &[]);
    assert_eq!(data_indices(&first), [1]);
    assert_eq!(
        s.on_packet(&ClientPacket::Ack(1)),
        Step::Send(vec![Datagram::Data { index: 2, offset: 512, len: 512 }])
    );
    // 1024 is a multiple of 512: an empty third block says "end".
    assert_eq!(s.on_packet(&ClientPacket::Ack(2)), Step::Send(vec![Datagram::Data { index: 3, offset: 1024, len: 0 }]));
    assert_eq!(s.on_packet(&ClientPacket::Ack(3)), Step::Done);
    assert!(s.is_finished());
}

#[test]
fn windows_advance_on_full_and_partial_acks_and_ignore_duplicates() {
    let (mut s, first, _) = session(10 * 1468, &[("blksize", "1468"), ("windowsize", "4")]);
    assert_eq!(first, Step::Send(vec![Datagram::Oack]));
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(0))), [1, 2, 3, 4]);
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(4))), [5, 6, 7, 8]);
    // Block 7 was lost: the client acknowledges 6, we go on from 7.
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(6))), [7, 8, 9, 10]);
    assert_eq!(s.on_packet(&ClientPacket::Ack(6)), Step::Wait, "duplicate ACK: no resend");
    assert_eq!(s.on_packet(&ClientPacket::Ack(2)), Step::Wait, "stale ACK");
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(10))), [11]);
    assert_eq!(s.on_packet(&ClientPacket::Ack(11)), Step::Done);
}

#[test]
fn block_numbers_roll_over_past_65535() {
    let len = 70_000 * 8 + 3;
    let (mut s, _, _) = session(len, &[("blksize", "8"), ("windowsize", "64")]);
    let mut acked = 0u64;
    let mut step = s.on_packet(&ClientPacket::Ack(0));
    loop {
        let last = *data_indices(&step).last().unwrap();
        assert_eq!(last, (acked + 64).min(70_001));
        acked = last;
        step = s.on_packet(&ClientPacket::Ack(last as u16));
        if step == Step::Done {
            break;
        }
    }
    assert_eq!(acked, 70_001);
}

#[test]
fn timeouts_resend_with_backoff_then_give_up() {
    let (mut s, _, _) = session(5000, &[("blksize", "1000"), ("windowsize", "2"), ("timeout", "2")]);
    assert_eq!(s.timeout(), Duration::from_secs(2));
    assert_eq!(s.on_timeout(), Step::Send(vec![Datagram::Oack]), "OACK resent");
    assert_eq!(s.timeout(), Duration::from_secs(4));
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(0))), [1, 2]);
    assert_eq!(s.timeout(), Duration::from_secs(2), "an answer resets the back-off");
    for _ in 0..5 {
        assert_eq!(data_indices(&s.on_timeout()), [1, 2]);
    }
    assert_eq!(s.timeout(), Duration::from_secs(16), "capped at 8x");
    assert_eq!(s.on_timeout(), Step::Abort(AbortReason::Timeout(5)));
}

#[test]
fn a_repeated_request_resends_the_first_packet_only_until_the_client_answers() {
    // Options: the OACK again, and the resend budget is untouched.
    let (mut s, _, _) = session(3000, &[("blksize", "1024")]);
    assert_eq!(s.on_repeated_request(), Step::Send(vec![Datagram::Oack]));
    assert_eq!(s.timeout(), Duration::from_secs(1), "not counted as a resend");
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(0))), vec![1]);
    // ACK 0 came, block 1 is out: still nothing of the file acknowledged.
    assert_eq!(data_indices(&s.on_repeated_request()), vec![1]);
    assert_eq!(data_indices(&s.on_packet(&ClientPacket::Ack(1))), vec![2]);
    // The client is reading this session: a late repeat changes nothing.
    assert_eq!(s.on_repeated_request(), Step::Wait);
    // No options: block 1 again.
    let (mut s, _, _) = session(3000, &[]);
    assert_eq!(data_indices(&s.on_repeated_request()), vec![1]);
    s.on_packet(&ClientPacket::Error { code: 0, message: String::new() });
    assert_eq!(s.on_repeated_request(), Step::Done);
}

#[test]
fn a_closed_client_port_ends_the_session_without_resends() {
    let (mut s, _, _) = session(3000, &[]);
    let gone = s.on_client_gone();
    assert_eq!(gone, Step::Abort(AbortReason::ClientGone));
    let Step::Abort(reason) = gone else { unreachable!() };
    assert_eq!(reason.outcome(), "client_gone");
    assert_eq!(s.on_timeout(), Step::Done, "nothing is resent after it");
    let probe = AbortReason::ClientError { code: code::OPTION_REFUSED, message: String::new() };
    assert_eq!((probe.outcome(), AbortReason::Timeout(5).outcome()), ("tsize_probe", "aborted"));
}

#[test]
fn a_client_error_ends_the_session_and_tsize_probes_are_recognised() {
    let (mut s, _, _) = session(5000, &[("tsize", "0")]);
    let error = parse_client(b"\x00\x05\x00\x08tsize probe\x00").unwrap();
    let Step::Abort(reason) = s.on_packet(&error) else { panic!() };
    assert!(reason.is_tsize_probe(), "{reason}");
    assert!(s.is_finished());
    assert_eq!(s.on_timeout(), Step::Done, "no resends after an ERROR");
}

proptest::proptest! {
    /// Whatever the client sends, the session never panics, never sends a block
    /// past the end, and ends within a bounded number of steps.
    #[test]
    fn arbitrary_client_behaviour(len in 0u64..20_000, blk in 8u16..2000, win in 1u16..20,
                                  acks in proptest::collection::vec(proptest::prelude::any::<Option<u16>>(), 0..300)) {
        let (blk, win) = (blk.to_string(), win.to_string());
        let (mut s, _, _) = session(len, &[("blksize", &blk), ("windowsize", &win)]);
        for ack in acks {
            let step = match ack { Some(a) => s.on_packet(&ClientPacket::Ack(a)), None => s.on_timeout() };
            if let Step::Send(v) = step {
                for p in v {
                    if let Datagram::Data { offset, len: n, .. } = p {
                        proptest::prop_assert!(offset + n as u64 <= len);
                    }
                }
            }
        }
    }
}

#[test]
fn a_timeout_out_of_bounds_is_declined_not_altered() {
    let limits = Limits { min_timeout_secs: 2, max_timeout_secs: 10, ..Limits::default() };
    let negotiate_timeout = |secs: &str| {
        let opts = vec![("timeout".to_string(), secs.to_string()), ("tsize".to_string(), "0".to_string())];
        negotiate(&opts, 100, &limits)
    };
    // In bounds: accepted and echoed exactly (RFC 2349).
    let n = negotiate_timeout("5");
    assert_eq!(n.timeout, Duration::from_secs(5));
    assert_eq!(&n.oack.unwrap()[2..], b"timeout\x005\x00tsize\x00100\x00");
    for bounds in ["2", "10"] {
        assert_eq!(negotiate_timeout(bounds).timeout, Duration::from_secs(bounds.parse().unwrap()));
    }
    // Out of our bounds (or of the RFC's 1..=255): left out of the OACK, our default used.
    for declined in ["1", "11", "255", "256", "0", "-1", "x"] {
        let n = negotiate_timeout(declined);
        assert_eq!(n.timeout, limits.default_timeout, "{declined}");
        assert_eq!(&n.oack.unwrap()[2..], b"tsize\x00100\x00", "{declined}");
    }
    // Only a declined timeout asked for: no OACK at all, straight to DATA.
    let n = negotiate(&[("timeout".into(), "200".into())], 100, &limits);
    assert!(n.oack.is_none());
}

#[test]
fn the_default_limits_bound_a_silent_clients_hold() {
    // With the largest timeout a client can get, a session that hears nothing gives
    // up within 1 + 2 + 4 + 8 + 8 + 8 = 31 timeouts (the socket layer's session
    // lifetime bounds it further).
    let limits = Limits::default();
    let opts = vec![("timeout".to_string(), limits.max_timeout_secs.to_string())];
    let n = negotiate(&opts, 5000, &limits);
    let (mut s, _) = Session::start(&n, 5000, &limits);
    let mut waited = Duration::ZERO;
    loop {
        waited += s.timeout();
        if let Step::Abort(_) = s.on_timeout() {
            break;
        }
    }
    assert_eq!(waited, Duration::from_secs(u64::from(limits.max_timeout_secs) * 31));
}

/// The blksize granted for a client asking `ask` under `limits`.
fn granted_blksize(ask: &str, limits: &Limits) -> u16 {
    negotiate(&[("blksize".into(), ask.into())], 100_000, limits).blksize
}

#[test]
fn blksize_is_the_least_of_the_ask_the_configured_cap_and_the_link_mtu() {
    let defaults = Limits::default();
    // A 1500-byte link changes nothing: 1468 is exactly one Ethernet frame.
    assert_eq!(defaults.for_link_mtu(1500).max_blksize, 1468);
    assert_eq!(granted_blksize("1468", &defaults.for_link_mtu(1500)), 1468);
    // MTU 1400 (an overlay, smee issue 70): the block shrinks so one DATA is one frame.
    let overlay = defaults.for_link_mtu(1400);
    assert_eq!(granted_blksize("1468", &overlay), 1368);
    assert_eq!(u32::from(granted_blksize("9000", &overlay)) + DATA_OVERHEAD, 1400);
    // A smaller ask is kept; loopback's 64 KiB MTU leaves the configured cap.
    assert_eq!(granted_blksize("1024", &overlay), 1024);
    assert_eq!(granted_blksize("9000", &defaults.for_link_mtu(65536)), 1468);
    // The configured cap (pixiecore's 1450) wins over a roomier link.
    let configured = Limits { max_blksize: 1450, ..defaults };
    assert_eq!(granted_blksize("1468", &configured.for_link_mtu(9000)), 1450);
    assert_eq!(granted_blksize("1468", &configured.for_link_mtu(1400)), 1368);
    // A link smaller than any block still yields a legal blksize (RFC 2348: >= 8).
    assert_eq!(defaults.for_link_mtu(0).max_blksize, 8);
    assert_eq!(defaults.for_link_mtu(68).max_blksize, 36);
    // The OACK carries the capped value; a client that asks nothing gets 512 as ever.
    let n = negotiate(&[("blksize".into(), "1468".into())], 10, &overlay);
    assert_eq!(&n.oack.unwrap()[2..], b"blksize\x001368\x00");
    assert_eq!(negotiate(&[], 10, &overlay).blksize, 512);
}

proptest::proptest! {
    /// Whatever the ask and the link, the granted block fits one frame of the link
    /// (when any legal block can), never exceeds the ask or the configured cap.
    #[test]
    fn a_granted_block_fits_the_link(ask in 8u16..=65464, max in 8u16..=65464, mtu in 0u32..100_000) {
        let limits = Limits { max_blksize: max, ..Limits::default() }.for_link_mtu(mtu);
        let got = granted_blksize(&ask.to_string(), &limits);
        proptest::prop_assert!(got <= ask && got <= max);
        if mtu >= 40 {
            proptest::prop_assert!(u32::from(got) + DATA_OVERHEAD <= mtu);
        }
    }
}

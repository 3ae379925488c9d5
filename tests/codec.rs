//! Property tests of the sans-IO codec: any message round-trips, and no
//! input, however malformed, makes it panic or over-read.

use proptest::prelude::*;
use sockdemo::Protocol;
use sockdemo::protocol::{Codec, Decoded, Reply, is_bye};

fn framed(limit: usize) -> Codec {
    Codec::new(Protocol::Framed, 1024, limit).unwrap()
}

proptest! {
    // Failures are reported with their minimal input; nothing is written to disk.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Framed: encode then decode gives back the same payload, using exactly the frame.
    #[test]
    fn framed_round_trips_any_message(message in proptest::collection::vec(any::<u8>(), 0..5000), tail in proptest::collection::vec(any::<u8>(), 0..10)) {
        let codec = framed(1 << 20);
        let mut buf = Vec::new();
        codec.encode(&[&message], &mut buf).unwrap();
        let frame_len = buf.len();
        buf.extend_from_slice(&tail);
        match codec.decode(&buf).unwrap() {
            Decoded::Message(frame) => {
                prop_assert_eq!(&buf[frame.payload.clone()], &message[..]);
                prop_assert_eq!(frame.consumed(), frame_len);
            }
            other => prop_assert!(false, "not decoded: {:?}", other),
        }
    }

    /// Framed: any prefix of a frame asks for more, exactly the missing bytes
    /// once the header is complete.
    #[test]
    fn framed_partial_input_asks_for_the_rest(message in proptest::collection::vec(any::<u8>(), 0..3000), cut in any::<prop::sample::Index>()) {
        let codec = framed(1 << 20);
        let mut buf = Vec::new();
        codec.encode(&[&message], &mut buf).unwrap();
        let cut = cut.index(buf.len());
        let Decoded::Incomplete { needed } = codec.decode(&buf[..cut]).unwrap() else {
            return Err(TestCaseError::fail("a partial frame decoded"));
        };
        if cut >= 4 {
            prop_assert_eq!(needed, buf.len() - cut);
        } else {
            prop_assert_eq!(needed, 4 - cut);
        }
    }

    /// Arbitrary bytes never panic and never point outside the buffer.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), limit in 0usize..5000) {
        for codec in [framed(limit), Codec::new(Protocol::Raw, 1 + limit, limit).unwrap()] {
            match codec.decode(&bytes) {
                Ok(Decoded::Message(frame)) => {
                    prop_assert!(frame.consumed() <= bytes.len());
                    prop_assert!(frame.payload.len() <= limit.max(codec.buffer_size()));
                }
                Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > 0),
                Err(e) => prop_assert!(e.to_string().contains("exceeds the limit")),
            }
        }
    }

    /// Raw: messages are the buffer cut into buffer_size pieces, in order.
    #[test]
    fn raw_cuts_preserve_every_byte(bytes in proptest::collection::vec(any::<u8>(), 1..5000), size in 1usize..2048) {
        let codec = Codec::new(Protocol::Raw, size, 1 << 20).unwrap();
        let mut rest = &bytes[..];
        let mut joined = Vec::new();
        while let Decoded::Message(frame) = codec.decode(rest).unwrap() {
            prop_assert!(frame.payload.len() <= size && !frame.payload.is_empty());
            joined.extend_from_slice(&rest[frame.payload.clone()]);
            rest = &rest[frame.consumed()..];
        }
        prop_assert_eq!(joined, bytes);
    }

    /// Replies are the prefix and the message bytes, untouched, unless the message is bye.
    #[test]
    fn raw_reply_is_byte_exact(message in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut out = Vec::new();
        let reply = Codec::default().encode_reply(b"P: ", &message, &mut out).unwrap();
        if is_bye(&message) {
            prop_assert_eq!(reply, Reply::Bye);
        } else {
            prop_assert_eq!(reply, Reply::Echo);
            prop_assert_eq!(&out[..3], b"P: ");
            prop_assert_eq!(&out[3..], &message[..]);
        }
    }
}

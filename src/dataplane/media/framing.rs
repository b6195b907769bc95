//! RFC 4571 framing of ICE-TCP (RFC 6544): each STUN, DTLS or RTP/RTCP packet on a TCP
//! connection is preceded by its length as a 16-bit big-endian number. Shared by the server's
//! passive side and the viewer's active side.

use tokio_util::codec::LengthDelimitedCodec;

use super::stun;

/// Larger than any STUN message, DTLS record or RTP/RTCP packet either side sends; a longer
/// frame means the peer is not speaking ICE-TCP and the connection is closed.
pub const MAX_FRAME: usize = 8 * 1024;

/// Decodes and encodes RFC 4571 frames.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Whether the first bytes of a connection on the HTTP port are an RFC 4571 frame holding a
/// STUN binding request (RFC 5389: type 0x0001, magic cookie 0x2112A442). `None` while too few
/// bytes have arrived to tell. HTTP requests start with an ASCII method name, which as a
/// length would exceed any STUN message, so the two can never be confused.
pub fn is_ice_tcp_start(head: &[u8]) -> Option<bool> {
    if head.first().is_some_and(u8::is_ascii_alphabetic) {
        return Some(false);
    }
    if head.len() < 10 {
        return None;
    }
    let len = u16::from_be_bytes([head[0], head[1]]) as usize;
    Some((20..=MAX_FRAME).contains(&len) && stun::is_binding_request_start(&head[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    fn binding_request_frame() -> Vec<u8> {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend([7u8; 12]);
        let mut framed = (stun.len() as u16).to_be_bytes().to_vec();
        framed.extend(stun);
        framed
    }

    #[test]
    fn tells_ice_tcp_from_http_by_the_first_bytes() {
        let frame = binding_request_frame();
        assert_eq!(is_ice_tcp_start(&frame), Some(true));
        assert_eq!(is_ice_tcp_start(&frame[..4]), None, "too short to tell");
        for http in [&b"GET / HTTP/1.1\r\n"[..], b"POST /whep/x", b"OPTIONS *"] {
            assert_eq!(is_ice_tcp_start(http), Some(false));
            assert_eq!(is_ice_tcp_start(&http[..1]), Some(false));
        }
        let mut response = frame.clone();
        response[2] = 0x01;
        response[3] = 0x01; // a binding success response does not open a connection
        assert_eq!(is_ice_tcp_start(&response), Some(false));
        let mut no_magic = frame.clone();
        no_magic[6] = 0;
        assert_eq!(is_ice_tcp_start(&no_magic), Some(false));
        assert_eq!(is_ice_tcp_start(&[0u8; 16]), Some(false));
        let tls = [0x16, 3, 1, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(is_ice_tcp_start(&tls), Some(false));
    }

    #[test]
    fn frames_carry_a_big_endian_length_and_oversize_ones_fail() {
        let mut codec = codec();
        let mut buf = BytesMut::new();
        codec
            .encode(Bytes::from_static(&[1, 2, 3]), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &[0, 3, 1, 2, 3]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], &[1, 2, 3]);
        let mut oversize = BytesMut::from(&((MAX_FRAME + 1) as u16).to_be_bytes()[..]);
        assert!(codec.decode(&mut oversize).is_err());
        let mut partial = BytesMut::from(&[0u8, 5, 1][..]);
        assert!(codec.decode(&mut partial).unwrap().is_none());
    }
}

//! Just enough STUN (RFC 5389) to route and nudge: which session a request names, and whether
//! it nominates a candidate pair.

const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const USERNAME: u16 = 0x0006;
/// RFC 8445: the controlling agent's nomination.
const USE_CANDIDATE: u16 = 0x0025;

/// The value of the first attribute of type `typ`, if `data` is a STUN message that has one.
fn attribute(data: &[u8], typ: u16) -> Option<&[u8]> {
    if data.len() < 20 || data[0] > 3 || data[4..8] != MAGIC {
        return None;
    }
    let mut at = 20;
    while at + 4 <= data.len() {
        let this = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        let value = data.get(at + 4..at + 4 + len)?;
        if this == typ {
            return Some(value);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The first half of a STUN request's USERNAME (`ours:theirs`), i.e. our local ufrag.
pub fn local_ufrag(data: &[u8]) -> Option<&str> {
    let username = std::str::from_utf8(attribute(data, USERNAME)?).ok()?;
    username.split(':').next()
}

/// Whether `head` (at least 8 bytes) starts a STUN binding request: its type and magic cookie.
pub fn is_binding_request_start(head: &[u8]) -> bool {
    starts_as(head, BINDING_REQUEST)
}

/// Whether `head` begins a STUN message of type `typ` (with the magic cookie).
fn starts_as(head: &[u8], typ: [u8; 2]) -> bool {
    head.get(..2) == Some(&typ[..]) && head.get(4..8) == Some(&MAGIC[..])
}

/// A binding success response: the answer to one of our connectivity checks.
pub fn is_binding_success(data: &[u8]) -> bool {
    data.len() >= 20 && starts_as(data, BINDING_SUCCESS)
}

/// A binding request carrying USE-CANDIDATE: the viewer nominating the pair it arrived on.
pub fn is_nomination(data: &[u8]) -> bool {
    is_binding_request_start(data) && attribute(data, USE_CANDIDATE).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_username_routes_by_our_ufrag() {
        let mut msg = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        msg.extend([0u8; 12]);
        let username = b"ours:theirs";
        msg.extend([0x00, 0x06, 0, username.len() as u8]);
        msg.extend(username);
        msg.push(0);
        assert_eq!(local_ufrag(&msg), Some("ours"));
        assert_eq!(local_ufrag(&msg[..10]), None);
        let mut rtp = msg.clone();
        rtp[0] = 0x80;
        assert_eq!(local_ufrag(&rtp), None);
    }

    #[test]
    fn nominations_carry_use_candidate() {
        let mut msg = vec![0x00, 0x01, 0, 8, 0x21, 0x12, 0xa4, 0x42];
        msg.extend([0u8; 12]);
        assert!(!is_nomination(&msg));
        msg.extend([0x00, 0x25, 0, 0]);
        assert!(is_nomination(&msg));
        assert!(!is_binding_success(&msg));
        msg[1] = 0x01;
        msg[0] = 0x01; // a success response is no nomination
        assert!(!is_nomination(&msg));
        assert!(is_binding_success(&msg));
    }
}

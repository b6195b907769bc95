//! Just enough H.264 RTP payload inspection (RFC 6184) to find where keyframes begin.

pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// NAL unit types that start in this RTP payload (FU-A continuation fragments start none).
pub fn starting_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&first) = payload.first() else {
        return Vec::new();
    };
    match first & 0x1f {
        NAL_STAP_A => {
            let mut types = Vec::new();
            let mut at = 1;
            while at + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[at], payload[at + 1]]) as usize;
                if size == 0 || at + 2 + size > payload.len() {
                    break;
                }
                types.push(payload[at + 2] & 0x1f);
                at += 2 + size;
            }
            types
        }
        NAL_FU_A => match payload.get(1) {
            Some(&header) if header & 0x80 != 0 => vec![header & 0x1f],
            _ => Vec::new(),
        },
        // 1..=23 are single NAL units; 0 and 25..=31 (other aggregations, FU-B) start none we use.
        nal @ 1..=23 => vec![nal],
        _ => Vec::new(),
    }
}

/// Tracks the keyframe boundaries of one H.264 RTP stream.
#[derive(Default)]
pub struct KeyframeDetector {
    last_sps_timestamp: Option<u32>,
}

impl KeyframeDetector {
    /// True when this packet begins a keyframe: an SPS, or an IDR not preceded by an SPS of the
    /// same frame (passthrough inputs may not repeat parameter sets).
    pub fn is_keyframe_start(&mut self, timestamp: u32, payload: &[u8]) -> bool {
        let types = starting_nal_types(payload);
        if types.contains(&NAL_SPS) {
            let new_frame = self.last_sps_timestamp != Some(timestamp);
            self.last_sps_timestamp = Some(timestamp);
            return new_frame;
        }
        if types.contains(&NAL_IDR) && self.last_sps_timestamp != Some(timestamp) {
            self.last_sps_timestamp = Some(timestamp);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_nal_fu_a_and_stap_a() {
        assert_eq!(starting_nal_types(&[0x67, 1, 2]), vec![7]);
        assert_eq!(starting_nal_types(&[0x7c, 0x85, 0]), vec![5]);
        assert!(starting_nal_types(&[0x7c, 0x05, 0]).is_empty());
        let stap = [0x78, 0, 2, 0x67, 0xaa, 0, 2, 0x68, 0xbb];
        assert_eq!(starting_nal_types(&stap), vec![7, 8]);
        assert!(starting_nal_types(&[]).is_empty());
        assert_eq!(starting_nal_types(&[0x41, 0x9a]), vec![1]);
        assert!(starting_nal_types(&[0x7c]).is_empty());
        assert!(
            starting_nal_types(&[0x7c, 0x45, 0x88]).is_empty(),
            "end fragment"
        );
        assert!(
            starting_nal_types(&[0x00, 0x01]).is_empty(),
            "type 0 is reserved"
        );
    }

    #[test]
    fn stap_a_stops_at_truncated_unit() {
        let payload = [0x78, 0x00, 0x03, 0x67, 0x42, 0xe0, 0x00, 0x09, 0x68];
        assert_eq!(starting_nal_types(&payload), vec![NAL_SPS]);
    }

    #[test]
    fn keyframe_starts_once_per_frame() {
        let mut d = KeyframeDetector::default();
        assert!(d.is_keyframe_start(100, &[0x67, 0]));
        assert!(!d.is_keyframe_start(100, &[0x68, 0]));
        assert!(!d.is_keyframe_start(100, &[0x7c, 0x85, 0]));
        assert!(!d.is_keyframe_start(200, &[0x41, 0]));
        // An IDR without parameter sets still starts a keyframe.
        assert!(d.is_keyframe_start(300, &[0x65, 0]));
    }
}

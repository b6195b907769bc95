//! What a viewer's browser reports about what we send it: the `fraction lost` of its RTCP
//! receiver reports, its receiver-estimated maximum bitrate (REMB, `goog-remb`) and the
//! packets it NACKs. `rtc` 0.21 keeps inbound RTCP inside its interceptor chain (a terminus
//! drops it before the application) and does not fold receiver reports into its stats, so
//! this interceptor, placed wire-most, notes them as the packet passes, and changes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// The latest of each kind of report naming one of our SSRCs, with a count so a reader can
/// tell a new report from one it has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latest {
    pub loss_reports: u64,
    /// Of 256.
    pub fraction_lost: u8,
    pub estimates: u64,
    pub estimate_kbps: u32,
}

/// NACKed packets held for the shard; a viewer that floods NACKs loses the excess.
const MAX_NACKED: usize = 1024;

/// Shared between the interceptor (inside the peer) and the shard that reads it.
#[derive(Clone, Default)]
pub struct ViewerReports(Arc<Mutex<Reports>>);

#[derive(Default)]
struct Reports {
    latest: HashMap<u32, Latest>,
    /// (SSRC, sequence number) of each packet NACKed and not yet taken.
    nacked: Vec<(u32, u16)>,
}

impl ViewerReports {
    /// What the viewer last reported on `ssrc`, if anything named it.
    pub fn latest(&self, ssrc: u32) -> Option<Latest> {
        self.0.lock().unwrap().latest.get(&ssrc).copied()
    }

    /// The packets NACKed since the last call, oldest first.
    pub fn take_nacked(&self) -> Vec<(u32, u16)> {
        std::mem::take(&mut self.0.lock().unwrap().nacked)
    }

    fn note(&self, ssrc: u32, update: impl FnOnce(&mut Latest)) {
        update(self.0.lock().unwrap().latest.entry(ssrc).or_default());
    }

    fn note_nack(&self, nack: &TransportLayerNack) {
        let mut reports = self.0.lock().unwrap();
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                if reports.nacked.len() < MAX_NACKED {
                    reports.nacked.push((nack.media_ssrc, seq));
                }
            }
        }
    }
}

/// Passes every packet through, noting receiver reports, REMBs and NACKs on the way in.
pub struct FeedbackProbe {
    reports: ViewerReports,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl FeedbackProbe {
    pub fn new(reports: ViewerReports) -> Self {
        FeedbackProbe {
            reports,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

/// A REMB's bitrate in kbit/s; the wire format (6-bit exponent, 18-bit mantissa) reaches far
/// beyond `u32` bits/s, so it saturates.
fn kbps(bits_per_second: f32) -> u32 {
    (bits_per_second / 1000.0).clamp(0.0, u32::MAX as f32) as u32
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackProbe {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for packet in packets {
                let any = packet.as_any();
                if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    for block in &rr.reports {
                        self.reports.note(block.ssrc, |l| {
                            l.loss_reports += 1;
                            l.fraction_lost = block.fraction_lost;
                        });
                    }
                } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    self.reports.note_nack(nack);
                } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                    for ssrc in &remb.ssrcs {
                        self.reports.note(*ssrc, |l| {
                            l.estimates += 1;
                            l.estimate_kbps = kbps(remb.bitrate);
                        });
                    }
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for FeedbackProbe {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use rtc::shared::TransportContext;

    fn inbound(packets: Vec<Box<dyn rtc::rtcp::Packet>>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(packets)),
        }
    }

    #[test]
    fn receiver_reports_and_estimates_are_noted_and_the_packets_pass() {
        let reports = ViewerReports::default();
        let mut probe = FeedbackProbe::new(reports.clone());
        let rr = ReceiverReport {
            reports: vec![ReceptionReport {
                ssrc: 42,
                fraction_lost: 64,
                ..Default::default()
            }],
            ..Default::default()
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: 812_500.0,
            ssrcs: vec![42, 43],
        };
        probe.handle_read(inbound(vec![Box::new(rr)])).unwrap();
        probe.handle_read(inbound(vec![Box::new(remb)])).unwrap();
        assert!(
            probe.poll_read().is_some() && probe.poll_read().is_some(),
            "passed on"
        );
        let expected = Latest {
            loss_reports: 1,
            fraction_lost: 64,
            estimates: 1,
            estimate_kbps: 812,
        };
        assert_eq!(reports.latest(42), Some(expected));
        assert_eq!(reports.latest(43).map(|l| l.estimate_kbps), Some(812));
        assert_eq!(reports.latest(43).map(|l| l.loss_reports), Some(0));
        assert_eq!(reports.latest(7), None);
    }

    #[test]
    fn nacked_packets_are_noted_once_and_taken() {
        let reports = ViewerReports::default();
        let mut probe = FeedbackProbe::new(reports.clone());
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 42,
            // 100, and 102 and 105 by the bitmask (bits 1 and 4).
            nacks: vec![NackPair {
                packet_id: 100,
                lost_packets: 0b1_0010,
            }],
        };
        probe.handle_read(inbound(vec![Box::new(nack)])).unwrap();
        assert!(probe.poll_read().is_some(), "passed on");
        assert_eq!(reports.take_nacked(), vec![(42, 100), (42, 102), (42, 105)]);
        assert!(reports.take_nacked().is_empty());
    }

    #[test]
    fn an_estimate_beyond_u32_saturates() {
        assert_eq!(kbps(1.0e13), u32::MAX);
        assert_eq!(kbps(-5.0), 0);
    }
}

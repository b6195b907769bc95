//! The loss a viewer reports on what we send it. `rtc` 0.21 keeps inbound RTCP inside its
//! interceptor chain (a terminus drops it before the application) and does not fold receiver
//! reports into its stats, so this interceptor, placed wire-most, notes the `fraction lost` of
//! each report block as the packet passes, and changes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// The latest report per media SSRC: how many reports so far, and the last `fraction lost`
/// (of 256). Shared between the interceptor (inside the peer) and the shard that reads it.
#[derive(Clone, Default)]
pub struct LossReports(Arc<Mutex<HashMap<u32, (u64, u8)>>>);

impl LossReports {
    /// (reports received, last fraction lost) for `ssrc`, if any report named it.
    pub fn latest(&self, ssrc: u32) -> Option<(u64, u8)> {
        self.0.lock().unwrap().get(&ssrc).copied()
    }

    fn note(&self, ssrc: u32, fraction_lost: u8) {
        let mut reports = self.0.lock().unwrap();
        let entry = reports.entry(ssrc).or_default();
        *entry = (entry.0 + 1, fraction_lost);
    }
}

/// Passes every packet through, noting receiver-report blocks on the way in.
pub struct LossProbe {
    reports: LossReports,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl LossProbe {
    pub fn new(reports: LossReports) -> Self {
        LossProbe {
            reports,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for LossProbe {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for packet in packets {
                if let Some(rr) = packet.as_any().downcast_ref::<ReceiverReport>() {
                    for block in &rr.reports {
                        self.reports.note(block.ssrc, block.fraction_lost);
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

impl Interceptor for LossProbe {
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
    use rtc::shared::TransportContext;

    #[test]
    fn receiver_report_blocks_are_noted_and_the_packet_passes() {
        let reports = LossReports::default();
        let mut probe = LossProbe::new(reports.clone());
        let rr = ReceiverReport {
            reports: vec![ReceptionReport {
                ssrc: 42,
                fraction_lost: 64,
                ..Default::default()
            }],
            ..Default::default()
        };
        let packet = TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(rr)])),
        };
        probe.handle_read(packet).unwrap();
        assert!(probe.poll_read().is_some(), "passed on");
        assert_eq!(reports.latest(42), Some((1, 64)));
        assert_eq!(reports.latest(7), None);
    }
}

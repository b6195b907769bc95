//! SRTP protection of our own sending leg, in place in the datagram's buffer: AES-128-GCM
//! (RFC 7714) and AES-CM with HMAC-SHA1-80 (RFC 3711). `rtc`'s `srtp::Context` copied every
//! packet into a new buffer and looked its stream up in a SipHash map, which cost more than
//! the cipher; the sender keeps the one piece of per-stream state (the rollover counter).

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use bytes::BytesMut;
use ctr::cipher::{InnerIvInit, StreamCipher, StreamCipherCoreWrapper};
use ring::{aead, hmac};
use rtc::srtp::protection_profile::ProtectionProfile;

use super::keytap::SrtpKeys;

/// RFC 3711 §4.3.1 key derivation labels for SRTP (not SRTCP, which `rtc` keeps doing).
const LABEL_ENCRYPTION: u8 = 0;
const LABEL_AUTH: u8 = 1;
const LABEL_SALT: u8 = 2;
/// HMAC-SHA1-80: the tag keeps the first 80 bits of the MAC.
const SHA1_80_TAG: usize = 10;
const SHA1_AUTH_KEY: usize = 20;
const GCM_TAG: usize = 16;

/// The profiles our leg protects with (`rtc` keeps AES-256-GCM), for the tests.
#[cfg(test)]
pub const PROFILES: [ProtectionProfile; 2] = [
    ProtectionProfile::AeadAes128Gcm,
    ProtectionProfile::Aes128CmHmacSha1_80,
];

#[derive(Debug, thiserror::Error)]
#[error("our SRTP leg does not do {0:?} with a {1}-byte key and a {2}-byte salt")]
pub struct Unsupported(ProtectionProfile, usize, usize);

type AesCtr = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

// One per viewer, made once and never moved on the media path: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Gcm(aead::LessSafeKey),
    CmSha1(CmSha1),
}

struct CmSha1 {
    aes: Aes128,
    auth: hmac::Key,
}

/// The session keys of one direction of SRTP, derived from the captured master keys.
pub struct SrtpProtect {
    cipher: Cipher,
    /// The session salt: 12 bytes for GCM, 14 for AES-CM.
    salt: [u8; 14],
}

impl SrtpProtect {
    pub fn new(keys: &SrtpKeys) -> Result<Self, Unsupported> {
        let unsupported =
            || Unsupported(keys.profile, keys.master_key.len(), keys.master_salt.len());
        let (key, salt) = (&keys.master_key[..], &keys.master_salt[..]);
        let salt_len = match keys.profile {
            ProtectionProfile::AeadAes128Gcm => 12,
            ProtectionProfile::Aes128CmHmacSha1_80 => 14,
            _ => return Err(unsupported()),
        };
        if key.len() != 16 || salt.len() != salt_len {
            return Err(unsupported());
        }
        let master = Aes128::new(GenericArray::from_slice(key));
        let mut session_key = [0u8; 16];
        derive(&master, salt, LABEL_ENCRYPTION, &mut session_key);
        let mut session_salt = [0u8; 14];
        derive(&master, salt, LABEL_SALT, &mut session_salt[..salt_len]);
        let cipher = if salt_len == 12 {
            let key = aead::UnboundKey::new(&aead::AES_128_GCM, &session_key)
                .map_err(|_| unsupported())?;
            Cipher::Gcm(aead::LessSafeKey::new(key))
        } else {
            let mut auth = [0u8; SHA1_AUTH_KEY];
            derive(&master, salt, LABEL_AUTH, &mut auth);
            Cipher::CmSha1(CmSha1 {
                aes: Aes128::new(GenericArray::from_slice(&session_key)),
                auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
            })
        };
        Ok(SrtpProtect {
            cipher,
            salt: session_salt,
        })
    }

    /// Bytes the protection adds after the payload.
    pub fn overhead(&self) -> usize {
        match self.cipher {
            Cipher::Gcm(_) => GCM_TAG,
            Cipher::CmSha1(_) => SHA1_80_TAG,
        }
    }

    /// Encrypts the RTP packet in `datagram`, whose header is its first `header_len` bytes, and
    /// appends the tag. `index` is the packet's 48-bit SRTP index: rollover count and sequence
    /// number.
    pub fn protect_rtp(&self, datagram: &mut BytesMut, header_len: usize, ssrc: u32, index: u64) {
        let (roc, seq) = ((index >> 16) as u32, index as u16);
        match &self.cipher {
            Cipher::Gcm(key) => {
                // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XORed with the salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&seq.to_be_bytes());
                iv.iter_mut().zip(&self.salt).for_each(|(b, s)| *b ^= s);
                let (header, payload) = datagram.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(iv),
                        aead::Aad::from(&*header),
                        payload,
                    )
                    .expect("AES-GCM seals any RTP-sized payload");
                datagram.extend_from_slice(tag.as_ref());
            }
            Cipher::CmSha1(cm) => {
                // RFC 3711 §4.1.1: salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16, the block counter last.
                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(&self.salt);
                iv[4..8]
                    .iter_mut()
                    .zip(ssrc.to_be_bytes())
                    .for_each(|(b, s)| *b ^= s);
                iv[8..14]
                    .iter_mut()
                    .zip(&index.to_be_bytes()[2..])
                    .for_each(|(b, s)| *b ^= s);
                // From the expanded key already held: no key schedule per packet.
                let core = AesCtr::inner_iv_init(cm.aes.clone(), GenericArray::from_slice(&iv));
                StreamCipherCoreWrapper::from_core(core)
                    .apply_keystream(&mut datagram[header_len..]);
                // §4.2: the MAC covers the packet and then the rollover counter.
                let mut mac = hmac::Context::with_key(&cm.auth);
                mac.update(datagram);
                mac.update(&roc.to_be_bytes());
                datagram.extend_from_slice(&mac.sign().as_ref()[..SHA1_80_TAG]);
            }
        }
    }
}

/// RFC 3711 §4.3.1/§4.3.3 with a key derivation rate of 0: AES-CM keyed with the master key,
/// over the master salt with `label` at byte 7 (the salt left-aligned in the block, as the
/// 96-bit salts of RFC 7714 are too), the block counter in the last two bytes.
fn derive(master: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        let mut block = GenericArray::from(block);
        master.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp;
    use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};

    fn keys(profile: ProtectionProfile) -> SrtpKeys {
        SrtpKeys {
            profile,
            master_key: (1..=16).collect(),
            master_salt: (100..100 + profile.salt_len() as u8).collect(),
        }
    }

    /// Each profile, with our protection and `rtc`'s context on the viewer's side.
    fn both_ways()
    -> impl Iterator<Item = (ProtectionProfile, SrtpProtect, rtc::srtp::context::Context)> {
        PROFILES.into_iter().map(|profile| {
            let keys = keys(profile);
            (
                profile,
                SrtpProtect::new(&keys).unwrap(),
                keys.context().unwrap(),
            )
        })
    }

    fn datagram(header: &rtp::header::Header, payload: &[u8]) -> (BytesMut, usize) {
        let packet = rtp::Packet {
            header: header.clone(),
            payload: Bytes::copy_from_slice(payload),
        };
        let mut buf = BytesMut::zeroed(packet.marshal_size());
        packet.marshal_to(&mut buf).unwrap();
        (buf, header.marshal_size())
    }

    #[test]
    fn rtc_decrypts_what_we_protect_in_both_profiles_with_csrcs_and_across_a_rollover() {
        for (profile, ours, mut viewer) in both_ways() {
            let payload: Vec<u8> = (0..1100u32).map(|i| (i * 7) as u8).collect();
            for (roc, seq) in [(0u64, 65534u16), (0, 65535), (1, 0), (1, 1)] {
                let header = rtp::header::Header {
                    version: 2,
                    marker: seq == 0,
                    payload_type: 96,
                    sequence_number: seq,
                    timestamp: 1234,
                    ssrc: 0xdead_beef,
                    csrc: vec![7, 8],
                    ..Default::default()
                };
                let (mut buf, header_len) = datagram(&header, &payload);
                let clear_len = buf.len();
                ours.protect_rtp(
                    &mut buf,
                    header_len,
                    header.ssrc,
                    roc << 16 | u64::from(seq),
                );
                assert_eq!(buf.len(), clear_len + ours.overhead(), "{profile:?}");
                assert_ne!(
                    &buf[header_len..header_len + 16],
                    &payload[..16],
                    "{profile:?}"
                );
                let clear = viewer.decrypt_rtp(&buf).expect("rtc decrypts it");
                let got = rtp::Packet::unmarshal(&mut clear.freeze()).unwrap();
                assert_eq!(got.header, header, "{profile:?}");
                assert_eq!(&got.payload[..], &payload[..], "{profile:?}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_fails_authentication() {
        for (profile, ours, mut viewer) in both_ways() {
            let header = rtp::header::Header {
                version: 2,
                sequence_number: 9,
                ssrc: 5,
                ..Default::default()
            };
            let (mut buf, header_len) = datagram(&header, b"payload");
            ours.protect_rtp(&mut buf, header_len, 5, 9);
            buf[header_len + 2] ^= 1;
            assert!(viewer.decrypt_rtp(&buf).is_err(), "{profile:?}");
        }
    }

    #[test]
    fn other_profiles_and_key_sizes_are_refused() {
        let mut wrong = keys(ProtectionProfile::AeadAes128Gcm);
        wrong.master_salt.push(0);
        assert!(SrtpProtect::new(&wrong).is_err());
        assert!(SrtpProtect::new(&keys(ProtectionProfile::AeadAes256Gcm)).is_err());
    }
}

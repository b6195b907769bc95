//! The SRTP master key and salt of what we send to one viewer.
//!
//! `rtc` 0.21 keeps its SRTP contexts private, so sending media beside its pipeline
//! ([`super::sender`]) needs the keys another way. Each peer is given this crypto provider: it
//! hands every call to the default one and watches the SRTP key derivation (RFC 3711 §4.3),
//! the only user of single AES blocks, whose first block is the local master key over the
//! master salt. The capture counts only once the session key that block yields is the key
//! `rtc` then builds its SRTP cipher with, so if `rtc` ever derives otherwise we learn nothing
//! and the viewer stays on `rtc`'s own path.

use std::sync::{Arc, Mutex};

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm, default_provider,
};
use rtc::srtp::protection_profile::ProtectionProfile;

/// The profile, master key and master salt `rtc` protects our media with.
#[derive(Clone)]
pub struct SrtpKeys {
    pub profile: ProtectionProfile,
    pub master_key: Vec<u8>,
    pub master_salt: Vec<u8>,
}

impl SrtpKeys {
    /// An `rtc` SRTP context keyed with these: the viewer's side, decrypting, in tests.
    #[cfg(test)]
    pub fn context(&self) -> Result<rtc::srtp::context::Context, rtc::shared::error::Error> {
        use rtc::shared::error::Error;
        let crypto = default_provider().map_err(|e| Error::Other(e.to_string()))?;
        rtc::srtp::context::Context::new(
            &self.master_key,
            &self.master_salt,
            self.profile,
            None,
            None,
            crypto.crypto(),
        )
    }
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

enum Tap {
    /// No SRTP key derived yet (the DTLS handshake runs).
    Waiting,
    /// The first derivation block: the local master key, its input and output.
    FirstBlock {
        key: Vec<u8>,
        input: [u8; 16],
        output: [u8; 16],
    },
    /// Confirmed; later derivations (the viewer's keys) are not ours.
    Keys(SrtpKeys),
}

/// A crypto provider that notes the local SRTP keys as `rtc` derives them.
pub struct KeyTap {
    crypto: TapCrypto,
}

struct TapCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    tap: Mutex<Tap>,
}

impl KeyTap {
    pub fn new() -> Result<Arc<Self>, CryptoError> {
        Ok(Arc::new(KeyTap {
            crypto: TapCrypto {
                inner: default_provider()?,
                tap: Mutex::new(Tap::Waiting),
            },
        }))
    }

    /// The local keys, once `rtc` has derived them and they are confirmed.
    pub fn keys(&self) -> Option<SrtpKeys> {
        match &*self.crypto.tap.lock().unwrap() {
            Tap::Keys(keys) => Some(keys.clone()),
            _ => None,
        }
    }
}

impl TapCrypto {
    fn note_block(&self, key: &[u8], input: &[u8], output: &[u8]) {
        let mut tap = self.tap.lock().unwrap();
        if let (Tap::Waiting, Ok(input), Ok(output)) = (&*tap, input.try_into(), output.try_into())
        {
            *tap = Tap::FirstBlock {
                key: key.to_vec(),
                input,
                output,
            };
        }
    }

    /// A cipher keyed with the first block's output confirms it; the kind of cipher names the
    /// profile, and with it how much of the block's input is the salt (RFC 3711 §4.3.1).
    fn note_session_key(&self, profile: ProtectionProfile, session_key: &[u8]) {
        let mut tap = self.tap.lock().unwrap();
        if let Tap::FirstBlock { key, input, output } = &*tap
            && output.as_slice() == session_key
            && key.len() == profile.key_len()
        {
            *tap = Tap::Keys(SrtpKeys {
                profile,
                master_key: key.clone(),
                master_salt: input[..profile.salt_len()].to_vec(),
            });
        }
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self.inner.crypto()
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "webrtc-egress key tap"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.crypto.inner.random()
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        let input = block.to_vec();
        self.crypto().block_encrypt(algorithm, key, block)?;
        if algorithm == BlockCipherAlgorithm::Aes128 {
            self.note_block(key, &input, block);
        }
        Ok(())
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        let cipher = self.crypto().new_stream_cipher(algorithm, key)?;
        // Of the AES-CM profiles only the 80-bit tag is offered (`peer::SRTP_PROFILES`).
        if algorithm == StreamCipherAlgorithm::Aes128Ctr {
            self.note_session_key(ProtectionProfile::Aes128CmHmacSha1_80, key);
        }
        Ok(cipher)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        let cipher = self.crypto().new_aead(algorithm, key)?;
        if algorithm == AeadAlgorithm::Aes128Gcm {
            self.note_session_key(ProtectionProfile::AeadAes128Gcm, key);
        }
        Ok(cipher)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;

    /// `rtc` builds the local context first, then the viewer's, each from its master key and
    /// salt; the tap must name the first, with its profile.
    fn captured(profile: ProtectionProfile) -> (Option<SrtpKeys>, SrtpKeys) {
        // (ProtectionProfile has no PartialEq; the tests compare its Debug form.)
        let tap = KeyTap::new().unwrap();
        let local = SrtpKeys {
            profile,
            master_key: (1..=profile.key_len() as u8).collect(),
            master_salt: (100..100 + profile.salt_len() as u8).collect(),
        };
        let remote_key: Vec<u8> = (50..50 + profile.key_len() as u8).collect();
        let remote_salt: Vec<u8> = (200..200 + profile.salt_len() as u8).collect();
        assert!(tap.keys().is_none());
        for (key, salt) in [
            (&local.master_key, &local.master_salt),
            (&remote_key, &remote_salt),
        ] {
            Context::new(key, salt, profile, None, None, tap.crypto()).unwrap();
        }
        (tap.keys(), local)
    }

    #[test]
    fn the_local_keys_are_captured_for_gcm_and_cm() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let (got, want) = captured(profile);
            let got = got.unwrap_or_else(|| panic!("nothing captured for {profile:?}"));
            assert_eq!(format!("{:?}", got.profile), format!("{profile:?}"));
            assert_eq!(got.master_key, want.master_key);
            assert_eq!(got.master_salt, want.master_salt);
        }
    }

    #[test]
    fn a_block_that_keys_no_cipher_is_not_taken_for_keys() {
        let tap = KeyTap::new().unwrap();
        let mut block = [7u8; 16];
        tap.crypto()
            .block_encrypt(BlockCipherAlgorithm::Aes128, &[9u8; 16], &mut block)
            .unwrap();
        tap.crypto()
            .new_aead(AeadAlgorithm::Aes128Gcm, &[3u8; 16])
            .unwrap();
        assert!(tap.keys().is_none());
    }
}

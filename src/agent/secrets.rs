//! The Secrets the resource names (TURN passwords, the HS256 key of viewer tokens), read by
//! name through the API server: `get` on Secrets of the pod's namespace, never list or watch.
//! Their values live only in the agent's memory, never in the ConfigMap or the pod spec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::warn;

use crate::crd::{SecretKeyRef, WebRtcSettings};
use crate::dataplane::auth::trim_newline;

/// Why a Secret's key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read Secret {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("Secret {name} has no key {key:?}")]
    NoKey { name: String, key: String },
    #[error("Secret {name} key {key:?} is not UTF-8")]
    NotText { name: String, key: String },
}

#[derive(Clone)]
pub struct SecretReader {
    api: Api<Secret>,
    /// The last credential read per Secret key: kept when a re-read fails (the API server is
    /// away), so players are not handed TURN servers without a password during an outage.
    credentials: Arc<Mutex<HashMap<(String, String), String>>>,
}

impl SecretReader {
    pub fn new(api: Api<Secret>) -> Self {
        SecretReader {
            api,
            credentials: Arc::default(),
        }
    }

    /// The value of one key, a trailing newline dropped (`echo` leaves one).
    pub async fn read(&self, secret: &SecretKeyRef) -> Result<Vec<u8>, SecretError> {
        let object = self
            .api
            .get(&secret.name)
            .await
            .map_err(|source| SecretError::Get {
                name: secret.name.clone(),
                source,
            })?;
        let value = object
            .data
            .and_then(|mut data| data.remove(&secret.key))
            .ok_or_else(|| SecretError::NoKey {
                name: secret.name.clone(),
                key: secret.key.clone(),
            })?;
        Ok(trim_newline(value.0))
    }

    /// Fills each ICE server's credential from its `credentialSecretRef`. A Secret that cannot
    /// be read keeps the credential last read from it; one never read leaves its server without
    /// a credential (STUN still works; TURN then fails, and the log says why) rather than
    /// keeping the processes from starting.
    pub async fn resolve_ice_credentials(&self, webrtc: &mut WebRtcSettings) {
        for (i, server) in webrtc.ice_servers.iter_mut().enumerate() {
            let Some(secret) = &server.credential_secret_ref else {
                continue;
            };
            let value = self.read(secret).await.and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| SecretError::NotText {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                })
            });
            let key = (secret.name.clone(), secret.key.clone());
            let mut known = self.credentials.lock().unwrap();
            server.credential = match value {
                Ok(credential) => {
                    known.insert(key, credential.clone());
                    Some(credential)
                }
                Err(e) => match known.get(&key) {
                    Some(last) => {
                        warn!("spec.webrtc.iceServers[{i}]: keeping the credential last read: {e}");
                        Some(last.clone())
                    }
                    None => {
                        warn!("spec.webrtc.iceServers[{i}] offered without a credential: {e}");
                        None
                    }
                },
            };
        }
    }
}

//! Who may watch: the one place that verifies WHEP credentials. A request passes with the
//! static bearer token (every process) or with a signed, unexpired JWT whose `processes` claim
//! names the process (HS256 with a shared key, or RS256/ES256 with keys from a JWKS URL).
//! Refusals say why, as RFC 6750 asks: 401 for a missing or invalid token, 403 for a valid one
//! that does not cover the process, 503 while the JWKS cannot be fetched.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tracing::{info, warn};

/// The claim listing the process ids a token may watch; `"*"` stands for every process.
pub const PROCESSES_CLAIM: &str = "processes";
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// A token naming an unknown `kid` fetches the JWKS again, at most this often.
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The JWKS is fetched again this often anyway, so removed keys stop working.
const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS is a few kB; refuse to buffer more than this.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Flags of `serve` and `agent` that say who may watch.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// Static bearer token required on WHEP requests (lets a viewer watch every process).
    #[arg(long, env = "WEBRTC_EGRESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accept HS256 JWTs signed with the key in this file (its raw bytes, a trailing newline
    /// ignored).
    #[arg(long, conflicts_with = "jwks_url")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Accept RS256/ES256 JWTs signed with a key of this JSON Web Key Set.
    #[arg(long)]
    pub jwks_url: Option<String>,
    /// Require this `aud` in JWTs.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Require this `iss` in JWTs.
    #[arg(long)]
    pub jwt_issuer: Option<String>,
}

/// Where JWT signing keys come from.
#[derive(Clone, Debug)]
pub enum JwtKeys {
    /// A shared HS256 key.
    Hs256(Vec<u8>),
    /// A JWKS URL (RS256/ES256 keys).
    Jwks(String),
}

/// How JWTs are checked.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub keys: JwtKeys,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Why the auth settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read the JWT key {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the HS256 key is empty")]
    EmptyKey,
    #[error("--jwt-audience/--jwt-issuer need --jwt-secret-file or --jwks-url")]
    NoJwtKey,
    #[error("JWT key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("JWKS URL {0}")]
    Url(String),
}

impl AuthArgs {
    /// The JWT settings of the flags, the HS256 key read from its file.
    pub fn jwt(&self) -> Result<Option<JwtConfig>, AuthSetupError> {
        let keys = match (&self.jwt_secret_file, &self.jwks_url) {
            (Some(path), _) => {
                let key = std::fs::read(path).map_err(|source| AuthSetupError::KeyFile {
                    path: path.clone(),
                    source,
                })?;
                JwtKeys::Hs256(trim_newline(key))
            }
            (None, Some(url)) => JwtKeys::Jwks(url.clone()),
            (None, None) if self.jwt_audience.is_some() || self.jwt_issuer.is_some() => {
                return Err(AuthSetupError::NoJwtKey);
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(JwtConfig {
            keys,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        }))
    }
}

/// Keys are often written with `echo`; the newline is never part of the key.
pub fn trim_newline(mut key: Vec<u8>) -> Vec<u8> {
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    key
}

/// A refused request: its status and plain reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401 without an error code (RFC 6750 section 3.1: no credentials were sent).
    #[error("a bearer token is required")]
    Missing,
    /// 401 `invalid_token`.
    #[error("{0}")]
    Invalid(String),
    /// 403 `insufficient_scope`.
    #[error("{0}")]
    Forbidden(String),
    /// 503: the JWKS could not be fetched.
    #[error("{0}")]
    Unavailable(String),
}

impl Denied {
    /// The `WWW-Authenticate` value of a 401 or 403.
    pub fn challenge(&self) -> Option<String> {
        let (code, description) = match self {
            Denied::Missing => return Some("Bearer realm=\"whep\"".into()),
            Denied::Invalid(d) => ("invalid_token", d),
            Denied::Forbidden(d) => ("insufficient_scope", d),
            Denied::Unavailable(_) => return None,
        };
        // error_description allows %x20-21 / %x23-5B / %x5D-7E only.
        let description: String = description
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        Some(format!(
            "Bearer realm=\"whep\", error=\"{code}\", error_description=\"{description}\""
        ))
    }
}

/// Verifies WHEP credentials; cheap to clone.
#[derive(Clone, Default)]
pub struct Authenticator {
    token: Option<Arc<str>>,
    jwt: Option<Arc<JwtVerifier>>,
}

impl Authenticator {
    /// Starts fetching the JWKS in the background when one is configured.
    pub fn new(token: Option<String>, jwt: Option<JwtConfig>) -> Result<Self, AuthSetupError> {
        let jwt = jwt.map(JwtVerifier::new).transpose()?.map(Arc::new);
        Ok(Authenticator {
            token: token.map(Into::into),
            jwt,
        })
    }

    /// Whether anyone may watch without a token.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.jwt.is_none()
    }

    /// Lets `authorization` (the header's value) watch `process`, or says why not.
    pub async fn check(&self, authorization: Option<&str>, process: &str) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let token = authorization
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        if let Some(expected) = &self.token
            && constant_time_eq(token.as_bytes(), expected.as_bytes())
        {
            return Ok(());
        }
        match &self.jwt {
            Some(jwt) => jwt.check(token, process).await,
            None => Err(Denied::Invalid("wrong bearer token".into())),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    processes: Option<Vec<String>>,
}

struct JwtVerifier {
    keys: KeySource,
    audience: Option<String>,
    issuer: Option<String>,
}

enum KeySource {
    Hs256(DecodingKey),
    Jwks(Arc<JwksCache>),
}

impl JwtVerifier {
    fn new(config: JwtConfig) -> Result<Self, AuthSetupError> {
        let keys = match config.keys {
            JwtKeys::Hs256(key) if key.is_empty() => return Err(AuthSetupError::EmptyKey),
            JwtKeys::Hs256(key) => KeySource::Hs256(DecodingKey::from_secret(&key)?),
            JwtKeys::Jwks(url) => KeySource::Jwks(JwksCache::start(url)?),
        };
        Ok(JwtVerifier {
            keys,
            audience: config.audience,
            issuer: config.issuer,
        })
    }

    async fn check(&self, token: &str, process: &str) -> Result<(), Denied> {
        let invalid = |why: &str| Denied::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("not a valid bearer token or JWT"))?;
        let (key, alg) = match &self.keys {
            KeySource::Hs256(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(invalid("JWT must be signed with HS256"));
                }
                (key.clone(), Algorithm::HS256)
            }
            KeySource::Jwks(cache) => cache.key(header.kid.as_deref(), header.alg).await?,
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| Denied::Invalid(jwt_error(e.kind())))?;
        let Some(allowed) = data.claims.processes else {
            return Err(Denied::Forbidden(format!(
                "token has no \"{PROCESSES_CLAIM}\" claim"
            )));
        };
        if allowed.iter().any(|p| p == process || p == "*") {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "token does not allow process {process:?}"
            )))
        }
    }
}

fn jwt_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "bad token signature".into(),
        ErrorKind::InvalidAudience => "token audience (aud) does not match".into(),
        ErrorKind::InvalidIssuer => "token issuer (iss) does not match".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no {claim:?} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim {claim:?} is malformed"),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".into(),
        _ => "not a valid JWT".into(),
    }
}

/// Signing keys of a JWKS URL by `kid`, refreshed periodically and on an unknown `kid` (rate
/// limited, one fetch at a time).
struct JwksCache {
    url: hyper::Uri,
    http: HttpsClient,
    keys: RwLock<Keys>,
    /// Held while fetching, so a burst of tokens with a new `kid` makes one request.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// HTTPS (system roots, ring: the TLS stack the kube client already brings) or plain HTTP.
type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`, used for tokens without one.
    anonymous: Vec<(DecodingKey, Algorithm)>,
    /// Why the last fetch failed, while no fetch has succeeded.
    error: Option<String>,
    fetched: bool,
}

impl JwksCache {
    fn start(url: String) -> Result<Arc<Self>, AuthSetupError> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| AuthSetupError::Url(format!("{url}: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| AuthSetupError::Url(format!("TLS roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let cache = Arc::new(JwksCache {
            url,
            http,
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                // The first tick is the fetch at start, unless a token beat it to it.
                cache.refetch(REFETCH_MIN_INTERVAL).await;
            }
        });
        Ok(cache)
    }

    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), Denied> {
        if let Some(found) = self.lookup(kid, alg)? {
            return Ok(found);
        }
        self.refetch(REFETCH_MIN_INTERVAL).await;
        if let Some(found) = self.lookup(kid, alg)? {
            return Ok(found);
        }
        let keys = self.keys.read().expect("JWKS lock");
        if !keys.fetched {
            return Err(Denied::Unavailable(format!(
                "cannot fetch the signing keys: {}",
                keys.error.as_deref().unwrap_or("not fetched yet")
            )));
        }
        Err(Denied::Invalid(match kid {
            Some(kid) => format!("unknown signing key {kid:?}"),
            None => "token names no signing key (kid)".into(),
        }))
    }

    /// The key for `kid` when it is cached and suits `alg`.
    fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<(DecodingKey, Algorithm)>, Denied> {
        let keys = self.keys.read().expect("JWKS lock");
        let found = match kid {
            Some(kid) => keys.by_kid.get(kid),
            None if keys.anonymous.len() + keys.by_kid.len() == 1 => keys
                .anonymous
                .first()
                .or_else(|| keys.by_kid.values().next()),
            None => None,
        };
        match found {
            Some((key, key_alg)) if *key_alg == alg => Ok(Some((key.clone(), alg))),
            Some((_, key_alg)) => Err(Denied::Invalid(format!(
                "token is signed with {alg:?} but its key is for {key_alg:?}"
            ))),
            None => Ok(None),
        }
    }

    /// Fetches the JWKS unless it was fetched less than `min_interval` ago.
    async fn refetch(&self, min_interval: Duration) {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_interval) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let mut fresh = Keys {
                    fetched: true,
                    ..Default::default()
                };
                for jwk in &set.keys {
                    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                        continue;
                    }
                    match usable_key(jwk) {
                        Ok(key) => match &jwk.common.key_id {
                            Some(kid) => {
                                fresh.by_kid.insert(kid.clone(), key);
                            }
                            None => fresh.anonymous.push(key),
                        },
                        Err(why) => info!(kid = ?jwk.common.key_id, "JWKS key skipped: {why}"),
                    }
                }
                info!(
                    url = %self.url,
                    keys = fresh.by_kid.len() + fresh.anonymous.len(),
                    "fetched JWKS"
                );
                *self.keys.write().expect("JWKS lock") = fresh;
            }
            Err(why) => {
                // Known keys are kept: an unreachable JWKS must not lock viewers out.
                warn!(url = %self.url, "cannot fetch JWKS: {why}");
                self.keys.write().expect("JWKS lock").error = Some(why);
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        use http_body_util::BodyExt;
        let request = async {
            let response = self
                .http
                .get(self.url.clone())
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(body.to_bytes())
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, request)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
    }
}

/// The verification key of an RS256 or ES256 (P-256) JWK, with its algorithm.
fn usable_key(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    let alg = match (&jwk.algorithm, &jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return Err("only RS256 and ES256 (P-256) keys are used".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok((key, alg))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;

    const HS_KEY: &[u8] = b"a shared key of at least 32 bytes!";
    const RSA_1: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-1.pem");
    const RSA_2: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-2.pem");
    const EC_1: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-1.pem");

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims(processes: &[&str]) -> Value {
        json!({"sub": "viewer", "exp": now() + 600, "processes": processes})
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(HS_KEY).unwrap(),
            claims,
        )
    }

    fn hs_auth(audience: Option<&str>) -> Authenticator {
        Authenticator::new(
            None,
            Some(JwtConfig {
                keys: JwtKeys::Hs256(HS_KEY.to_vec()),
                audience: audience.map(Into::into),
                issuer: None,
            }),
        )
        .unwrap()
    }

    async fn check(auth: &Authenticator, token: &str, process: &str) -> Result<(), Denied> {
        auth.check(Some(&format!("Bearer {token}")), process).await
    }

    fn invalid(why: &str) -> Result<(), Denied> {
        Err(Denied::Invalid(why.into()))
    }

    #[tokio::test]
    async fn hs256_tokens_are_checked_for_time_signature_and_process() {
        let auth = hs_auth(None);
        assert_eq!(
            check(&auth, &hs256(&claims(&["cam1"])), "cam1").await,
            Ok(())
        );
        assert_eq!(check(&auth, &hs256(&claims(&["*"])), "cam2").await, Ok(()));
        assert_eq!(
            check(&auth, &hs256(&claims(&["cam1"])), "cam2").await,
            Err(Denied::Forbidden(
                "token does not allow process \"cam2\"".into()
            ))
        );
        let no_claim = json!({"exp": now() + 600});
        assert!(matches!(
            check(&auth, &hs256(&no_claim), "cam1").await,
            Err(Denied::Forbidden(_))
        ));

        let expired = json!({"exp": now() - 3600, "processes": ["cam1"]});
        assert_eq!(
            check(&auth, &hs256(&expired), "cam1").await,
            invalid("token expired")
        );
        // Within the leeway a just-expired token still passes (clock skew).
        let just_expired = json!({"exp": now() - 5, "processes": ["cam1"]});
        assert_eq!(check(&auth, &hs256(&just_expired), "cam1").await, Ok(()));
        let early = json!({"exp": now() + 7200, "nbf": now() + 3600, "processes": ["cam1"]});
        assert_eq!(
            check(&auth, &hs256(&early), "cam1").await,
            invalid("token not valid yet (nbf)")
        );
        let forever = json!({"processes": ["cam1"]});
        assert_eq!(
            check(&auth, &hs256(&forever), "cam1").await,
            invalid("token has no \"exp\" claim")
        );

        let other_key = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another key of at least 32 bytes!!").unwrap(),
            &claims(&["cam1"]),
        );
        assert_eq!(
            check(&auth, &other_key, "cam1").await,
            invalid("bad token signature")
        );
        // A token re-signed as "none" or with an RSA key is refused by its header.
        let rsa = sign(
            Algorithm::RS256,
            None,
            &EncodingKey::from_rsa_pem(RSA_1).unwrap(),
            &claims(&["cam1"]),
        );
        assert_eq!(
            check(&auth, &rsa, "cam1").await,
            invalid("JWT must be signed with HS256")
        );
        assert_eq!(
            check(&auth, "not.a.jwt", "cam1").await,
            invalid("not a valid bearer token or JWT")
        );
        assert_eq!(auth.check(None, "cam1").await, Err(Denied::Missing));
        assert_eq!(
            auth.check(Some("Basic dXNlcjpwdw=="), "cam1").await,
            Err(Denied::Missing)
        );
    }

    #[tokio::test]
    async fn audience_and_issuer_are_checked_when_configured() {
        let auth = Authenticator::new(
            None,
            Some(JwtConfig {
                keys: JwtKeys::Hs256(HS_KEY.to_vec()),
                audience: Some("whep".into()),
                issuer: Some("https://idp.example.org".into()),
            }),
        )
        .unwrap();
        let mut good = claims(&["cam1"]);
        good["aud"] = json!("whep");
        good["iss"] = json!("https://idp.example.org");
        assert_eq!(check(&auth, &hs256(&good), "cam1").await, Ok(()));
        let mut other_aud = good.clone();
        other_aud["aud"] = json!(["billing"]);
        assert_eq!(
            check(&auth, &hs256(&other_aud), "cam1").await,
            invalid("token audience (aud) does not match")
        );
        let mut other_iss = good.clone();
        other_iss["iss"] = json!("https://evil.example.org");
        assert_eq!(
            check(&auth, &hs256(&other_iss), "cam1").await,
            invalid("token issuer (iss) does not match")
        );
        // Without an audience configured, a token's `aud` is not held against it.
        assert_eq!(check(&hs_auth(None), &hs256(&good), "cam1").await, Ok(()));
    }

    #[tokio::test]
    async fn the_static_token_and_jwts_both_work_and_nothing_else_does() {
        let auth = Authenticator::new(
            Some("s3cret".into()),
            Some(JwtConfig {
                keys: JwtKeys::Hs256(HS_KEY.to_vec()),
                audience: None,
                issuer: None,
            }),
        )
        .unwrap();
        assert_eq!(check(&auth, "s3cret", "any").await, Ok(()));
        assert_eq!(
            check(&auth, &hs256(&claims(&["cam1"])), "cam1").await,
            Ok(())
        );
        assert!(check(&auth, "s3cret-not", "any").await.is_err());

        let only_token = Authenticator::new(Some("s3cret".into()), None).unwrap();
        assert_eq!(
            check(&only_token, &hs256(&claims(&["cam1"])), "cam1").await,
            invalid("wrong bearer token")
        );
        assert!(Authenticator::default().is_open());
        assert_eq!(Authenticator::default().check(None, "x").await, Ok(()));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(
            Denied::Missing.challenge().unwrap(),
            "Bearer realm=\"whep\""
        );
        assert_eq!(
            Denied::Invalid("token expired".into()).challenge().unwrap(),
            "Bearer realm=\"whep\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(
            Denied::Forbidden("process \"a\"\u{e9}".into())
                .challenge()
                .unwrap(),
            "Bearer realm=\"whep\", error=\"insufficient_scope\", \
             error_description=\"process 'a'?\""
        );
        assert_eq!(Denied::Unavailable("x".into()).challenge(), None);
    }

    /// A JWKS endpoint on loopback serving whatever set the test puts in it, counting fetches.
    struct JwksServer {
        url: String,
        set: Arc<Mutex<Value>>,
        fetches: Arc<AtomicUsize>,
    }

    impl JwksServer {
        async fn start(set: Value) -> Self {
            let set = Arc::new(Mutex::new(set));
            let fetches = Arc::new(AtomicUsize::new(0));
            let app = {
                let (set, fetches) = (set.clone(), fetches.clone());
                axum::Router::new().route(
                    "/jwks.json",
                    axum::routing::get(move || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let body = set.lock().unwrap().clone();
                        async move { axum::Json(body) }
                    }),
                )
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            JwksServer {
                url: format!("http://{addr}/jwks.json"),
                set,
                fetches,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    /// The public JWK of a private key, with its `kid`.
    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn jwks_auth(url: &str) -> Authenticator {
        Authenticator::new(
            None,
            Some(JwtConfig {
                keys: JwtKeys::Jwks(url.into()),
                audience: None,
                issuer: None,
            }),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn rs256_and_es256_verify_with_keys_from_a_jwks_and_rotation_fetches_new_kids() {
        let rsa1 = EncodingKey::from_rsa_pem(RSA_1).unwrap();
        let rsa2 = EncodingKey::from_rsa_pem(RSA_2).unwrap();
        let ec1 = EncodingKey::from_ec_pem(EC_1).unwrap();
        let server = JwksServer::start(json!({"keys": [
            jwk(&rsa1, Algorithm::RS256, "rsa-1"),
            jwk(&ec1, Algorithm::ES256, "ec-1"),
        ]}))
        .await;
        let auth = jwks_auth(&server.url);

        let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &claims(&["cam1"]));
        assert_eq!(check(&auth, &rs, "cam1").await, Ok(()));
        let es = sign(Algorithm::ES256, Some("ec-1"), &ec1, &claims(&["cam1"]));
        assert_eq!(check(&auth, &es, "cam1").await, Ok(()));
        assert!(matches!(
            check(&auth, &es, "cam2").await,
            Err(Denied::Forbidden(_))
        ));
        let fetched = server.fetches();
        assert!(fetched >= 1, "keys came from the JWKS");

        // A token signed by rsa-2 but claiming rsa-1's kid: bad signature, no refetch.
        let forged = sign(Algorithm::RS256, Some("rsa-1"), &rsa2, &claims(&["cam1"]));
        assert_eq!(
            check(&auth, &forged, "cam1").await,
            invalid("bad token signature")
        );
        // An algorithm that does not match the key's (RSA key, token says ES256) is refused.
        let confused = sign(Algorithm::ES256, Some("rsa-1"), &ec1, &claims(&["cam1"]));
        assert!(matches!(
            check(&auth, &confused, "cam1").await,
            Err(Denied::Invalid(_))
        ));
        assert_eq!(server.fetches(), fetched, "known kids fetch nothing");

        // Rotation: the issuer publishes rsa-2; the first token with the new kid fetches it.
        let rotated = sign(Algorithm::RS256, Some("rsa-2"), &rsa2, &claims(&["cam1"]));
        *server.set.lock().unwrap() = json!({"keys": [jwk(&rsa2, Algorithm::RS256, "rsa-2")]});
        // The fetch at start may be too recent to refetch (rate limit): wait it out once.
        tokio::time::sleep(REFETCH_MIN_INTERVAL).await;
        assert_eq!(check(&auth, &rotated, "cam1").await, Ok(()));
        assert_eq!(server.fetches(), fetched + 1);
        // rsa-1 is gone from the set, so its tokens stop working...
        assert_eq!(
            check(&auth, &rs, "cam1").await,
            invalid("unknown signing key \"rsa-1\"")
        );
        // ...and a burst of unknown kids within the rate limit fetches nothing more.
        for i in 0..20 {
            let unknown = sign(
                Algorithm::RS256,
                Some(&format!("nope-{i}")),
                &rsa2,
                &claims(&["cam1"]),
            );
            assert!(check(&auth, &unknown, "cam1").await.is_err());
        }
        assert_eq!(
            server.fetches(),
            fetched + 1,
            "one fetch per interval at most"
        );
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_a_503_not_a_401() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let auth = jwks_auth(&format!("http://{closed}/jwks.json"));
        let rsa1 = EncodingKey::from_rsa_pem(RSA_1).unwrap();
        let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &claims(&["cam1"]));
        match check(&auth, &rs, "cam1").await {
            Err(Denied::Unavailable(why)) => {
                assert!(why.starts_with("cannot fetch the signing keys"), "{why}")
            }
            other => panic!("expected 503, got {other:?}"),
        }
    }
}

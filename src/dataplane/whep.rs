//! WHEP over HTTP (draft-ietf-wish-whep), plus the index, player, health and metrics endpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::Semaphore;

use super::authority;
use super::http;
use super::listener::ConnInfo;
use super::ratelimit::RateLimiter;
use crate::crd::RenditionSpec;
use crate::dataplane::media::rendition::Ladder;
use crate::dataplane::media::{
    Admission, Engine, PeerFactoryConfig, StreamKey, SubscribeError, Subscription,
};
use crate::dataplane::metrics::Metrics;
use crate::dataplane::subsystem::{Subsystem, TeardownHook};
use crate::health;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
const RETRY_AFTER_SECS: &str = "2";
/// Largest request body accepted: SDP offers and trickle fragments are a few kB.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub subsystem: Arc<Subsystem>,
    pub engine: Arc<Engine>,
    /// Bearer token WHEP requests must carry; None leaves WHEP open.
    pub token: Option<Arc<str>>,
    pub metrics: Metrics,
    /// Take the viewer-facing host from `X-Forwarded-Host` / `Forwarded` (set only behind a
    /// proxy that overwrites them).
    pub trust_forwarded: bool,
    /// Offers processed at once; answering one is the expensive request.
    pub offers_in_flight: Arc<Semaphore>,
    /// Offers per client address.
    pub offer_rate: Arc<RateLimiter>,
    /// Deadline of a whole request, body included.
    pub request_timeout: Duration,
}

/// An HTTP error with a plain-text reason; every failure a client can cause ends here.
struct ApiError {
    status: StatusCode,
    reason: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    fn retry_after(self) -> Self {
        self.with_header(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        )
    }

    fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.reason)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        let status = match &e {
            SubscribeError::BadOffer(_) | SubscribeError::BadCandidate(_) => {
                StatusCode::BAD_REQUEST
            }
            SubscribeError::StreamGone | SubscribeError::UnknownSession => StatusCode::NOT_FOUND,
            SubscribeError::ServerFull(_)
            | SubscribeError::ProcessFull(_)
            | SubscribeError::Closed
            | SubscribeError::Draining => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after();
            }
            SubscribeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Builds the HTTP app.
pub fn router(state: AppState) -> Router {
    let health = health::routes(Arc::new(state.metrics.clone()), state.engine.clone());
    Router::new()
        .route("/", get(index))
        .route("/play/{process}", get(player))
        .route("/api/v1/streams", get(streams))
        .route("/whep/{process}", post(offer).options(preflight))
        .route(
            "/whep/{process}/{session}",
            axum::routing::patch(trickle)
                .delete(hang_up)
                .options(preflight),
        )
        .merge(health)
        // An SDP offer is a few kB; nothing we accept comes near this.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.request_timeout,
            http::request_deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cors_and_count,
        ))
        .with_state(state)
}

/// A server is ready while it neither drains nor holds its viewer limit: the Service routes new
/// viewers only to ready pods, so a full pod's newcomers land where there is room, while the
/// sessions it holds keep flowing (their media does not go through readiness).
impl health::Readiness for Engine {
    fn readiness(&self) -> Result<(), String> {
        match self.admission() {
            Admission::Open => Ok(()),
            Admission::Full { held, limit } => Err(format!("full: {held}/{limit} viewers")),
            Admission::Draining => Err("draining: new viewers go to another replica".into()),
        }
    }
}

/// The WHEP side of teardown: close the stream's peers while its id still resolves.
pub fn teardown_hook(engine: Arc<Engine>) -> TeardownHook {
    Arc::new(move |process: String, key: StreamKey| {
        let engine = engine.clone();
        Box::pin(async move {
            let closed = engine.drop_stream(key).await;
            tracing::info!(%process, closed, "teardown closed subscribers");
        })
    })
}

/// CORS on every response, so players on other origins work; exposes what WHEP clients read.
async fn cors_and_count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let is_whep = request.uri().path().starts_with("/whep/");
    let mut response = next.run(request).await;
    if is_whep {
        state.metrics.whep_requests.inc();
        if response.status().is_client_error() || response.status().is_server_error() {
            state.metrics.whep_errors.inc();
        }
    }
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Location, ETag, Link, Accept-Patch, Retry-After, WWW-Authenticate",
        ),
    );
    response
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "POST, PATCH, DELETE, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type, If-Match",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
            (header::HeaderName::from_static("accept-post"), SDP),
            (header::HeaderName::from_static("accept-patch"), SDPFRAG),
        ],
    )
        .into_response()
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        _ => {
            let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            e.headers.push((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"whep\""),
            ));
            Err(e)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = given.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {expected}, got {given:?}"),
        ))
    }
}

fn utf8(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "body is not UTF-8"))
}

/// `Link` values for the configured ICE servers (WHEP section 4.4).
fn ice_server_links(factory: &PeerFactoryConfig) -> Vec<HeaderValue> {
    factory
        .ice_servers
        .iter()
        .flat_map(|server| {
            server.urls.iter().filter_map(move |url| {
                let mut link = format!("<{url}>; rel=\"ice-server\"");
                if let (Some(user), Some(cred)) = (&server.username, &server.credential) {
                    link.push_str(&format!(
                        "; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
                    ));
                }
                HeaderValue::from_str(&link).ok()
            })
        })
        .collect()
}

/// `?rendition=NAME` on the WHEP URL pins a viewer to one rendition of the ladder.
#[derive(serde::Deserialize, Default)]
struct OfferQuery {
    rendition: Option<String>,
}

/// How a new viewer follows the process's ladder: from the top, free to move, or pinned.
fn ladder_for(renditions: &[RenditionSpec], pin: Option<&str>) -> Result<Option<Ladder>, ApiError> {
    let names = || {
        let names: Vec<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
        names.join(", ")
    };
    if renditions.is_empty() {
        return match pin {
            Some(name) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("rendition {name:?}: this process has no renditions"),
            )),
            None => Ok(None),
        };
    }
    let top = renditions
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| r.bitrate_kbps)
        .map_or(0, |(i, _)| i);
    let (start, pinned) = match pin {
        None => (top, false),
        Some(name) => match renditions.iter().position(|r| r.name == name) {
            Some(i) => (i, true),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown rendition {name:?}; this process has: {}", names()),
                ));
            }
        },
    };
    Ok(Some(Ladder {
        bitrates_kbps: renditions.iter().map(|r| r.bitrate_kbps).collect(),
        start: start as u8,
        pinned,
    }))
}

async fn offer(
    State(state): State<AppState>,
    Path(process): Path<String>,
    Query(query): Query<OfferQuery>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.offer_rate.check(conn.peer.ip(), Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many offers from {}: retry in {secs} s", conn.peer.ip()),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs)));
    }
    let _in_flight = state
        .offers_in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many offers in flight")
                .retry_after()
        })?;
    authorize(&state, &headers)?;
    require_content_type(&headers, SDP)?;
    let stream = state
        .subsystem
        .lookup(&process)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no process {process:?}")))?;
    if !stream.is_live() {
        let status = stream.status.borrow().clone();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "process {process:?} is not live (FFmpeg {}{})",
                status.state,
                status
                    .last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        )
        .retry_after());
    }
    let ladder = ladder_for(&stream.renditions, query.rendition.as_deref())?;
    let sdp = utf8(&body)?;
    let engine = &state.engine;
    let tcp = match authority::tcp_candidate(&headers, &conn, state.trust_forwarded) {
        Some(candidate) => Some(authority::resolve(candidate).await),
        None => None,
    };
    tracing::debug!(%process, peer = %conn.peer, ?tcp, "offer");
    let subscription = Subscription {
        stream: stream.key,
        has_audio: stream.audio.is_some(),
        max_viewers: stream.max_viewers,
        ladder,
        metrics: stream.metrics.clone(),
    };
    let answer = engine.subscribe(subscription, sdp, tcp).await?;
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    let location = format!("/whep/{process}/{}", answer.session);
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location)
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad process id"))?,
    );
    if let Ok(etag) = HeaderValue::from_str(&answer.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(
        header::HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(SDPFRAG),
    );
    for link in ice_server_links(&engine.factory()) {
        h.append(header::LINK, link);
    }
    Ok(response)
}

/// Finds a session and checks it belongs to `process` (so ids cannot be probed across streams).
fn session_of(
    state: &AppState,
    process: &str,
    session: &str,
) -> Result<crate::dataplane::media::SessionInfo, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such session");
    let info = state.engine.session(session).ok_or_else(not_found)?;
    match state.subsystem.lookup(process) {
        Some(stream) if stream.key == info.stream => Ok(info),
        _ => Err(not_found()),
    }
}

async fn trickle(
    State(state): State<AppState>,
    Path((process, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let info = session_of(&state, &process, &session)?;
    require_content_type(&headers, SDPFRAG)?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    if let Some(tag) = if_match
        && tag.trim() != "*"
        && tag.trim() != info.etag
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "If-Match does not match the session's ETag",
        ));
    }
    let frag = parse_sdpfrag(utf8(&body)?)?;
    if frag.ufrag.is_some() && frag.ufrag != info.remote_ufrag {
        return Err(match if_match {
            None => ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "an ICE restart needs If-Match with the session's ETag",
            ),
            Some(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ICE restart is not supported; start a new session",
            ),
        });
    }
    state
        .engine
        .add_candidates(&session, frag.candidates)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn hang_up(
    State(state): State<AppState>,
    Path((process, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    session_of(&state, &process, &session)?;
    if state.engine.unsubscribe(&session).await {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such session"))
    }
}

struct SdpFrag {
    ufrag: Option<String>,
    candidates: Vec<RTCIceCandidateInit>,
}

/// Reads a trickle-ice-sdpfrag (RFC 8840): the ICE credentials and candidates per media section.
fn parse_sdpfrag(text: &str) -> Result<SdpFrag, ApiError> {
    let mut frag = SdpFrag {
        ufrag: None,
        candidates: Vec::new(),
    };
    let mut mid: Option<String> = None;
    let mut mline_index: Option<u16> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            frag.ufrag = Some(u.trim().to_owned());
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.trim().to_owned());
        } else if line.starts_with("m=") {
            mline_index = Some(mline_index.map_or(0, |i| i + 1));
        } else if let Some(c) = line.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                if c.split_whitespace().count() < 8 {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("malformed candidate line {line:?}"),
                    ));
                }
                frag.candidates.push(RTCIceCandidateInit {
                    candidate: c.to_owned(),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: mline_index,
                    username_fragment: frag.ufrag.clone(),
                    url: None,
                });
            }
        } else if !line.contains('=') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("not an SDP fragment line: {line:?}"),
            ));
        }
    }
    Ok(frag)
}

async fn streams(State(state): State<AppState>) -> Response {
    axum::Json(serde_json::json!({ "streams": state.subsystem.list() })).into_response()
}

async fn index(State(state): State<AppState>) -> Html<String> {
    Html(crate::dataplane::whep_pages::index(&state.subsystem.list()))
}

async fn player(State(state): State<AppState>, Path(process): Path<String>) -> Response {
    if state.subsystem.lookup(&process).is_none() {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no process {process:?}"))
            .into_response();
    }
    Html(crate::dataplane::whep_pages::player(&process)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdpfrag_candidates_and_ufrag() {
        let frag = parse_sdpfrag(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 UDP 2130706431 198.51.100.1 39132 typ host\r\na=end-of-candidates\r\n",
        )
        .unwrap_or_else(|_| panic!("valid fragment"));
        assert_eq!(frag.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.candidates.len(), 1);
        assert_eq!(frag.candidates[0].sdp_mid.as_deref(), Some("0"));
        assert!(
            frag.candidates[0]
                .candidate
                .starts_with("candidate:1 1 UDP")
        );
    }

    #[test]
    fn sdpfrag_rejects_garbage() {
        assert!(parse_sdpfrag("hello world").is_err());
        assert!(parse_sdpfrag("a=candidate:1 1 UDP").is_err());
    }
}

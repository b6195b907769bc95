//! WHEP over HTTP from the viewer's side: POST the offer, DELETE the session.

use super::*;

pub(super) fn url_error(url: &str, reason: impl ToString) -> ClientError {
    ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// One client per viewer, without keep-alive: hundreds of viewers must not hold hundreds of
/// idle TCP connections (file descriptors) besides their UDP sockets.
pub(super) fn http_client() -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(HTTP_TIMEOUT)
        .build()?)
}

/// The parts of a 201 response a viewer keeps.
pub(super) struct Answer {
    pub(super) sdp: String,
    pub(super) location: String,
    pub(super) session_url: Url,
    pub(super) etag: Option<String>,
    pub(super) headers: HeaderMap,
}

pub(super) async fn post_offer(
    http: &reqwest::Client,
    url: &Url,
    token: Option<&str>,
    offer: String,
) -> Result<Answer, ClientError> {
    let mut req = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/sdp")
        .body(offer);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    if status != StatusCode::CREATED {
        return Err(ClientError::Http {
            status: status.as_u16(),
            body,
        });
    }
    let location = header_str(&headers, LOCATION)
        .ok_or_else(|| ClientError::Location("missing".to_owned()))?;
    let session_url = url
        .join(&location)
        .map_err(|e| ClientError::Location(format!("{location:?}: {e}")))?;
    Ok(Answer {
        sdp: body,
        location,
        session_url,
        etag: header_str(&headers, ETAG),
        headers,
    })
}

pub(super) fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(super) async fn send_delete(
    http: &reqwest::Client,
    session_url: &Url,
    token: Option<&str>,
) -> Result<u16, ClientError> {
    let mut req = http.delete(session_url.clone());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    Ok(req.send().await?.status().as_u16())
}

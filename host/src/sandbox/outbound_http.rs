//! Outbound HTTP (`wasi:http`), denied unless a handler's manifest grants it:
//!
//! ```toml
//! [grants.http]
//! allow = ["api.example.com", "*.hooks.example.com", "127.0.0.1:8080"]
//! methods = ["POST"]          # default: any
//! timeout-ms = 10_000         # connect, first byte, and between bytes
//! max-response-bytes = 1_048_576
//! max-requests = 10           # per job
//! allow-private = false       # see below
//! ```
//!
//! A request whose host (and port, when the entry names one) is not on the list is refused
//! before any connection is made. Hosts that resolve to loopback, private or link-local
//! addresses are refused too, unless the entry is that IP literal or `allow-private` is
//! set. Main types: [`HttpGrant`], [`HttpPolicy`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::sandbox::Live;

/// The `[grants.http]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpGrant {
    /// Hosts the handler may call: `host`, `host:port`, or `*.domain`.
    pub allow: Vec<String>,
    /// Methods allowed (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Connect, first-byte and between-bytes timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The largest response body, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Requests per job.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// Allow hosts that resolve to loopback, private or link-local addresses.
    #[serde(default)]
    pub allow_private: bool,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_response_bytes() -> u64 {
    1 << 20
}

fn default_max_requests() -> u32 {
    10
}

impl HttpGrant {
    /// Checks the entries when the manifest loads.
    pub fn validate(&self) -> Result<(), String> {
        if self.allow.is_empty() {
            return Err("grants.http.allow lists no host".into());
        }
        if let Some(bad) = self.allow.iter().find(|e| e.is_empty() || e.contains('/')) {
            return Err(format!(
                "grants.http.allow: {bad:?} is not a host or host:port"
            ));
        }
        Ok(())
    }
}

/// The per-job policy: the grant (if any) and the requests made so far.
#[derive(Debug, Default)]
pub struct HttpPolicy {
    grant: Option<HttpGrant>,
    sent: u32,
    live: Option<Arc<Live>>,
}

impl HttpPolicy {
    /// A policy for one job; `None` refuses every request. A cancellation through `live`
    /// aborts a request in flight.
    pub fn new(grant: Option<HttpGrant>, live: Option<Arc<Live>>) -> Self {
        Self {
            grant,
            sent: 0,
            live,
        }
    }

    /// Decides on a request before anything is sent; returns the matching entry's
    /// literal IP, if it named one.
    fn admit(&mut self, request: &http::Request<WasiBody>) -> Result<(HttpGrant, bool), Error> {
        let Some(grant) = self.grant.clone() else {
            return Err(denied("this handler has no [grants.http]", request));
        };
        if self.sent >= grant.max_requests {
            return Err(denied(
                &format!(
                    "the limit of {} requests per job is reached",
                    grant.max_requests
                ),
                request,
            ));
        }
        if !grant.methods.is_empty()
            && !grant
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(request.method().as_str()))
        {
            return Err(denied("method not granted", request));
        }
        let uri = request.uri();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let entry = grant
            .allow
            .iter()
            .find(|entry| matches_entry(entry, &host, port));
        let Some(entry) = entry else {
            return Err(denied("host not on the allowlist", request));
        };
        let literal = host.parse::<IpAddr>().is_ok() && entry_host(entry) == host;
        self.sent += 1;
        Ok((grant, literal))
    }
}

fn denied(why: &str, request: &http::Request<WasiBody>) -> Error {
    tracing::info!(uri = %request.uri(), method = %request.method(), why, "outbound request refused");
    Error::HttpRequestDenied
}

fn entry_host(entry: &str) -> &str {
    match entry.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => entry,
    }
}

fn matches_entry(entry: &str, host: &str, port: u16) -> bool {
    let entry = entry.to_ascii_lowercase();
    let (entry_host, entry_port) = match entry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse::<u16>().ok()),
        _ => (entry.clone(), None),
    };
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    match entry_host.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => entry_host == host,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let admitted = self.admit(&request);
        let live = self.live.clone();
        let send = async move {
            let (grant, literal) = admitted?;
            let uri = request.uri().clone();
            check_destination(uri, &grant, literal).await?;
            let timeout = Duration::from_millis(grant.timeout_ms);
            let options = RequestOptions {
                connect_timeout: Some(timeout),
                first_byte_timeout: Some(timeout),
                between_bytes_timeout: Some(timeout),
            };
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let cap = usize::try_from(grant.max_response_bytes).unwrap_or(usize::MAX);
            let limited = response.map(|body| {
                http_body_util::Limited::new(body, cap)
                    .map_err(move |e| match e.downcast::<Error>() {
                        Ok(inner) => *inner,
                        Err(_) => Error::HttpResponseBodySize(Some(cap as u64)),
                    })
                    .boxed_unsync()
            });
            Ok((limited, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        };
        Box::new(async move {
            let Some(live) = live else {
                return send.await;
            };
            tokio::select! {
                sent = send => sent,
                () = live.cancelled() => Err(Error::InternalError(Some("the job was cancelled".into()))),
            }
        })
    }
}

/// Resolves the host and refuses private destinations unless allowed.
async fn check_destination(uri: http::Uri, grant: &HttpGrant, literal: bool) -> Result<(), Error> {
    if grant.allow_private || literal {
        return Ok(());
    }
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Error::DestinationNotFound)?;
    for address in addresses {
        if is_private(address.ip()) {
            tracing::info!(uri = %uri, ip = %address.ip(), "outbound request to a private address refused");
            return Err(Error::DestinationIpProhibited);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_host_port_and_wildcards() {
        assert!(matches_entry("api.example.com", "api.example.com", 443));
        assert!(!matches_entry("api.example.com", "evil.com", 443));
        assert!(matches_entry("127.0.0.1:8080", "127.0.0.1", 8080));
        assert!(!matches_entry("127.0.0.1:8080", "127.0.0.1", 8081));
        assert!(matches_entry("*.example.com", "a.b.example.com", 80));
        assert!(!matches_entry("*.example.com", "example.com.evil", 80));
        assert!(is_private(
            "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
        ));
        assert!(!is_private(IpAddr::from([93, 184, 216, 34])));
    }
}

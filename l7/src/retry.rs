//! Retry policies (VS-53..61, GW-50..53): how many retries, on which outcomes, with what
//! per-try timeout and backoff. One type for both APIs; each API's defaults are its own.

use std::time::Duration;

/// What one try came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection (refused, no route, TLS or HBONE failure).
    ConnectFailure,
    /// The stream was refused (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// Connected, then reset or closed before a response.
    Reset,
    /// The per-try timeout passed before a response.
    Timeout,
    /// A response, with its `grpc-status` when it carried one in its headers.
    Response { status: u16, grpc: Option<u32> },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub reset_before_request: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    /// `retriable-status-codes` (with bare codes added to `codes`).
    pub status_codes: bool,
    pub codes: Vec<u16>,
    /// gRPC status codes, one bit each (cancelled 1, deadline-exceeded 4,
    /// resource-exhausted 8, internal 13, unavailable 14): no allocation per policy.
    pub grpc: u32,
    /// Per-try timeouts retried without `5xx`/`gateway-error` (Gateway API's retry, GW-53).
    pub timeouts: bool,
}

impl RetryOn {
    /// Parses an Envoy `retryOn` list: names and bare status codes, comma separated; unknown
    /// names were refused by validation and are skipped here.
    pub fn parse(list: &str) -> RetryOn {
        let mut on = RetryOn::default();
        for c in list.split(',').map(str::trim) {
            match c {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "reset-before-request" => on.reset_before_request = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => on.status_codes = true,
                "cancelled" => on.grpc |= 1 << 1,
                "deadline-exceeded" => on.grpc |= 1 << 4,
                "resource-exhausted" => on.grpc |= 1 << 8,
                "internal" => on.grpc |= 1 << 13,
                "unavailable" => on.grpc |= 1 << 14,
                other => {
                    if let Ok(code) = other.parse::<u16>() {
                        on.codes.push(code);
                        on.status_codes = true;
                    }
                }
            }
        }
        on
    }

    /// Whether `o` is worth another try.
    pub fn matches(&self, o: Outcome) -> bool {
        match o {
            Outcome::ConnectFailure => {
                self.connect_failure
                    || self.five_xx
                    || self.gateway_error
                    || self.reset
                    || self.reset_before_request
            }
            Outcome::RefusedStream => self.refused_stream || self.five_xx || self.reset,
            Outcome::Reset => self.reset || self.five_xx || self.gateway_error,
            // A per-try timeout is retried only on 5xx or gateway-error (VS-54).
            Outcome::Timeout => self.five_xx || self.gateway_error || self.timeouts,
            Outcome::Response { status, grpc } => {
                (self.five_xx && status >= 500)
                    || (self.gateway_error && matches!(status, 502..=504))
                    || (self.retriable_4xx && status == 409)
                    || (self.status_codes && self.codes.contains(&status))
                    || grpc.is_some_and(|g| g < 32 && self.grpc & (1 << g) != 0)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (total tries = 1 + retries).
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// The base interval: retry n waits a random time up to `base * 2^(n-1)`, capped at
    /// ten times the base, as Envoy.
    pub backoff: Duration,
    pub on: RetryOn,
}

/// Envoy's base retry interval.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

impl RetryPolicy {
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            per_try_timeout: None,
            backoff: DEFAULT_BACKOFF,
            on: RetryOn::default(),
        }
    }

    /// Istio's mesh default when a route says nothing (VS-15): 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub fn mesh_default() -> RetryPolicy {
        // RetryOn::parse("connect-failure,refused-stream,unavailable,cancelled,
        // retriable-status-codes"), built without parsing: every request without a route
        // policy gets one.
        RetryPolicy {
            retries: 2,
            per_try_timeout: None,
            backoff: DEFAULT_BACKOFF,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                status_codes: true,
                grpc: 1 << 14 | 1 << 1,
                ..RetryOn::default()
            },
        }
    }

    /// A VirtualService rule's `retries` (VS-53..60): omitted → the mesh default; given
    /// without `attempts` → none; `retryOn` defaults to Istio's list.
    pub fn from_virtual_service(r: Option<&crate::istio::Retries>) -> RetryPolicy {
        let Some(r) = r else {
            return RetryPolicy::mesh_default();
        };
        let parse = |d: &Option<String>| {
            d.as_deref()
                .and_then(|d| crate::istio::parse_duration(d).ok())
        };
        RetryPolicy {
            retries: r.attempts.unwrap_or(0),
            per_try_timeout: parse(&r.per_try_timeout).filter(|d| !d.is_zero()),
            backoff: parse(&r.backoff)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_BACKOFF),
            on: RetryOn::parse(
                r.retry_on
                    .as_deref()
                    .unwrap_or("connect-failure,refused-stream,unavailable,cancelled"),
            ),
        }
    }

    /// An HTTPRoute rule's `retry` (GW-50..53): the listed codes, and always connection
    /// errors, resets and backend timeouts; without a stanza, the mesh default.
    pub fn from_http_route(
        r: Option<&crate::httproute::Retry>,
        per_try: Option<Duration>,
    ) -> RetryPolicy {
        let Some(r) = r else {
            return RetryPolicy::mesh_default();
        };
        let mut on = RetryOn::parse("connect-failure,refused-stream,reset");
        on.status_codes = true;
        on.codes = r.codes.clone();
        // A backend timeout is retried too (GW-53).
        on.timeouts = true;
        RetryPolicy {
            retries: r.attempts.unwrap_or(2),
            per_try_timeout: per_try,
            backoff: r
                .backoff
                .as_deref()
                .and_then(|d| crate::httproute::parse_duration(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_BACKOFF),
            on,
        }
    }

    /// Whether try number `tried` (1-based) that came to `o` is followed by another.
    pub fn again(&self, tried: u32, o: Outcome) -> bool {
        tried <= self.retries && self.on.matches(o)
    }

    /// The wait before retry `n` (1-based).
    pub fn wait(&self, n: u32) -> Duration {
        use rand::Rng;
        let cap = self.backoff * 10;
        let upper = self
            .backoff
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(cap);
        let ms = upper.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_default_is_istios_list() {
        assert_eq!(
            RetryPolicy::mesh_default().on,
            RetryOn::parse(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            )
        );
        let on = RetryOn::parse("deadline-exceeded,internal");
        let grpc = |g| Outcome::Response {
            status: 200,
            grpc: Some(g),
        };
        assert!(on.matches(grpc(4)) && on.matches(grpc(13)));
        assert!(!on.matches(grpc(14)) && !on.matches(grpc(40)));
    }
}

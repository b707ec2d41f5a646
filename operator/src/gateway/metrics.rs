//! The gateway's Prometheus metrics: requests, bytes and latency per job and member, the tenant
//! of each request, retries and refusals.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metrics of one gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered by a replica: `namespace`, `job`, `member`, `tenant`, `code`.
    pub requests: IntCounterVec,
    /// Request body bytes sent to replicas: `namespace`, `job`, `member`, `tenant`.
    pub request_bytes: IntCounterVec,
    /// Response body bytes streamed back: `namespace`, `job`, `member`, `tenant`.
    pub response_bytes: IntCounterVec,
    /// Seconds from receiving a request to the replica's response head (time to first byte).
    pub latency: HistogramVec,
    /// Requests in flight per replica's member.
    pub in_flight: IntGaugeVec,
    /// Requests sent again to another replica after one failed: `namespace`, `job`, `member`
    /// (the one that failed).
    pub retries: IntCounterVec,
    /// Requests refused by the gateway itself: `reason` (`unauthenticated`, `forbidden`,
    /// `rate_limited`, `no_job`, `no_replica`, `unreachable`, `too_large`).
    pub refused: IntCounterVec,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let job = &["namespace", "job", "member", "tenant"];
        let requests = IntCounterVec::new(
            Opts::new(
                "gpupool_gateway_requests_total",
                "Requests answered by a replica",
            ),
            &["namespace", "job", "member", "tenant", "code"],
        )
        .expect("static metric");
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "gpupool_gateway_request_bytes_total",
                "Request body bytes sent to replicas",
            ),
            job,
        )
        .expect("static metric");
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "gpupool_gateway_response_bytes_total",
                "Response body bytes streamed back to callers",
            ),
            job,
        )
        .expect("static metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "gpupool_gateway_request_duration_seconds",
                "Seconds from a request's arrival to its replica's response head",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["namespace", "job", "member"],
        )
        .expect("static metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "gpupool_gateway_in_flight_requests",
                "Requests in flight to replicas",
            ),
            &["namespace", "job", "member"],
        )
        .expect("static metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "gpupool_gateway_retries_total",
                "Requests sent again to another replica after one failed",
            ),
            &["namespace", "job", "member"],
        )
        .expect("static metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "gpupool_gateway_refused_total",
                "Requests refused by the gateway",
            ),
            &["reason"],
        )
        .expect("static metric");
        for c in [
            &requests,
            &request_bytes,
            &response_bytes,
            &retries,
            &refused,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        GatewayMetrics {
            registry,
            requests,
            request_bytes,
            response_bytes,
            latency,
            in_flight,
            retries,
            refused,
        }
    }
}

impl GatewayMetrics {
    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

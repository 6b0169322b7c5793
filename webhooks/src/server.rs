//! The HTTPS server: `GET /healthz`, and one POST path per admission rule
//! taking an `admission.k8s.io/v1` AdmissionReview. A bad request gets a
//! 4xx with a message, never a panic; every decision is logged.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes},
    header,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use rustls::ServerConfig;
use tokio::{net::TcpListener, time::Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::rule::{AdmissionRule, forbidden};

/// How long a connection may wait for the next request's headers (hyper
/// counts idle keep-alive time too). Longer than the apiserver's 90 s idle
/// timeout, so the apiserver always closes first: a POST written to a
/// connection the server has just closed is not retried, and with
/// failurePolicy Fail the user's request would be refused.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Bounds on what one request may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Larger request bodies get 413 (the apiserver sends whole objects; 3 MiB
    /// is above etcd's default 1.5 MiB object limit twice over).
    pub max_body_bytes: usize,
    /// Reading, deciding and answering one request; also bounds the TLS handshake.
    pub request_timeout: Duration,
}

/// Routes requests to the rules by path.
pub struct Router {
    rules: BTreeMap<&'static str, Arc<dyn AdmissionRule>>,
    limits: Limits,
}

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.into())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}

impl Router {
    pub fn new(rules: &[Arc<dyn AdmissionRule>], limits: Limits) -> Self {
        Self { rules: rules.iter().map(|r| (r.path(), r.clone())).collect(), limits }
    }

    /// The reply to one request, within [`Limits::request_timeout`].
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        match tokio::time::timeout(self.limits.request_timeout, self.route(req)).await {
            Ok(reply) => reply,
            Err(_) => {
                warn!(path, timeout = ?self.limits.request_timeout, "admission request timed out");
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not answered within {:?}", self.limits.request_timeout))
            }
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return match *req.method() {
                Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "/healthz answers GET\n"),
            };
        }
        let Some(rule) = self.rules.get(path.as_str()).cloned() else {
            let paths: Vec<_> = self.rules.keys().copied().collect();
            return text(
                StatusCode::NOT_FOUND,
                format!("no admission rule at {path}; served: /healthz, {}\n", paths.join(", ")),
            );
        };
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes a POSTed AdmissionReview\n"));
        }
        let max = self.limits.max_body_bytes;
        let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the {max}-byte limit\n"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return too_large();
        }
        let body = match Limited::new(req.into_body(), max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}\n")),
        };
        match parse(&body) {
            Ok(request) => self.decide(rule.as_ref(), &request, started),
            Err(why) => {
                warn!(path, why, "malformed admission request");
                text(StatusCode::BAD_REQUEST, format!("{why}\n"))
            }
        }
    }

    /// The rule's decision, logged with the time since the request arrived.
    fn decide(&self, rule: &dyn AdmissionRule, req: &AdmissionRequest<DynamicObject>, started: Instant) -> Reply {
        let response = forbidden(rule.review(req));
        log_decision(rule, req, &response, started.elapsed());
        match serde_json::to_vec(&response.into_review()) {
            Ok(json) => {
                let mut reply = Response::new(Full::new(Bytes::from(json)));
                reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                reply
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the AdmissionReview: {e}\n")),
        }
    }
}

/// An `admission.k8s.io/v1` AdmissionReview carrying a request, or why not.
pub(crate) fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    let (api_version, kind) = (review.types.api_version.as_str(), review.types.kind.as_str());
    if (api_version, kind) != ("admission.k8s.io/v1", "AdmissionReview") {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {api_version:?} kind {kind:?}"
        ));
    }
    review.try_into().map_err(|_| "the AdmissionReview has no request".to_string())
}

fn log_decision(
    rule: &dyn AdmissionRule,
    req: &AdmissionRequest<DynamicObject>,
    response: &AdmissionResponse,
    latency: Duration,
) {
    let object = match &req.namespace {
        Some(ns) => format!("{ns}/{}", req.name),
        None => req.name.clone(),
    };
    info!(
        rule = rule.name(),
        uid = %req.uid,
        kind = %req.kind.kind,
        object,
        operation = ?req.operation,
        user = req.user_info.username.as_deref().unwrap_or(""),
        allowed = response.allowed,
        patched = response.patch.is_some(),
        reason = %response.result.message,
        latency_us = latency.as_micros() as u64,
        "admission decision"
    );
}

/// Accepts TLS connections until the process ends. A failed accept (such
/// as running out of descriptors) is logged and retried, not fatal.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, router: Arc<Router>) -> Infallible {
    let acceptor = TlsAcceptor::from(tls);
    let timeout = router.limits.request_timeout;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accepting a webhook connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                // A stale caBundle on the apiserver's side shows up here.
                Ok(Err(e)) => return warn!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return warn!(%peer, "webhook TLS handshake timed out"),
            };
            let service = service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.handle(req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                warn!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::rules;

    fn router(max_body_bytes: usize) -> Router {
        let limits = Limits { max_body_bytes, request_timeout: Duration::from_secs(10) };
        Router::new(&rules::all(&rules::Context::empty("system:serviceaccount:berth-system:berth-manager")), limits)
    }

    async fn call(router: &Router, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let req = Request::builder().method(method).uri(path).body(Full::new(Bytes::from(body))).unwrap();
        let reply = router.handle(req).await;
        let status = reply.status();
        (status, reply.into_body().collect().await.unwrap().to_bytes().to_vec())
    }

    fn pod_update(user: &str, from: &str, to: &str) -> Value {
        let pod = |state: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "prod",
                   "labels": {"berth.dev/inplaceset": "web"}, "annotations": {"berth.dev/lifecycle-state": state}}})
        };
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "uid-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-0", "namespace": "prod", "operation": "UPDATE",
            "userInfo": {"username": user}, "object": pod(to), "oldObject": pod(from), "dryRun": false}})
    }

    #[tokio::test]
    async fn healthz_answers_and_unknown_paths_list_the_served_ones() {
        let router = router(1024);
        assert_eq!(call(&router, Method::GET, "/healthz", vec![]).await, (StatusCode::OK, b"ok\n".to_vec()));
        let (status, body) = call(&router, Method::POST, "/nope", vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8(body).unwrap().contains("/validate/inplaceset, /validate/pod-lifecycle"));
        let (status, _) = call(&router, Method::GET, "/validate/inplaceset", vec![]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn a_denial_carries_403_and_the_request_uid() {
        let body = serde_json::to_vec(&pod_update("alice", "Normal", "Updated")).unwrap();
        let (status, reply) = call(&router(1 << 20), Method::POST, "/validate/pod-lifecycle", body).await;
        assert_eq!(status, StatusCode::OK);
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(reply["kind"], "AdmissionReview");
        let response = &reply["response"];
        assert_eq!((response["uid"].as_str(), response["allowed"].as_bool()), (Some("uid-1"), Some(false)));
        assert_eq!(response["status"]["code"], 403);
        assert!(response["status"]["message"].as_str().unwrap().contains("alice may not change it"), "{response}");

        let body = serde_json::to_vec(&pod_update("alice", "Normal", "Normal")).unwrap();
        let (_, reply) = call(&router(1 << 20), Method::POST, "/validate/pod-lifecycle", body).await;
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn malformed_reviews_get_400_with_a_reason() {
        let router = router(1 << 20);
        let cases: [(&[u8], &str); 4] = [
            (b"{not json", "malformed AdmissionReview"),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 3}}"#,
                "malformed AdmissionReview",
            ),
            (
                br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#,
                "expected apiVersion admission.k8s.io/v1",
            ),
            (br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#, "has no request"),
        ];
        for (body, want) in cases {
            let (status, reply) = call(&router, Method::POST, "/validate/inplaceset", body.to_vec()).await;
            let reply = String::from_utf8(reply).unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
            assert!(reply.contains(want), "{reply:?} lacks {want:?}");
        }
    }

    #[tokio::test]
    async fn an_oversized_body_gets_413() {
        let body = serde_json::to_vec(&pod_update("alice", "Normal", "Updated")).unwrap();
        let (status, reply) = call(&router(100), Method::POST, "/validate/pod-lifecycle", body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(String::from_utf8(reply).unwrap(), "request body exceeds the 100-byte limit\n");
    }
}

//! Verifying proxies' tokens with the API server (Kubernetes source): a TokenReview for
//! audience `istio-ca`, as istiod does. The caller's service account comes from the
//! reviewed username and its node from the node the token is bound to (the
//! `authentication.kubernetes.io/node-name` extra of pod-bound projected tokens), so the
//! CA's node check works as with the control plane's own tokens. Answers are kept for a
//! short while: a proxy's streams and certificate requests do not each cost a review.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::token::{Claims, KubernetesClaims, NodeClaim};

/// The audience proxies' tokens are projected for.
pub const AUDIENCE: &str = "istio-ca";
const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long an answer is kept: a good one, and a refusal.
const KEEP_GOOD: Duration = Duration::from_secs(60);
const KEEP_BAD: Duration = Duration::from_secs(5);

/// An answer of the API server, and when it came.
type Answer = (Instant, Result<Claims, String>);

pub struct TokenReviewer {
    client: Client,
    answers: Mutex<HashMap<String, Answer>>,
}

impl TokenReviewer {
    pub fn new(client: Client) -> TokenReviewer {
        TokenReviewer {
            client,
            answers: Mutex::default(),
        }
    }

    /// The claims of `token`, or why the API server refused it.
    pub async fn review(&self, token: &str) -> Result<Claims, String> {
        if let Some((at, answer)) = self.answers.lock().unwrap().get(token) {
            let keep = if answer.is_ok() { KEEP_GOOD } else { KEEP_BAD };
            if at.elapsed() < keep {
                return answer.clone();
            }
        }
        let answer = self.ask(token).await;
        let mut answers = self.answers.lock().unwrap();
        answers.retain(|_, (at, _)| at.elapsed() < KEEP_GOOD);
        answers.insert(token.to_string(), (Instant::now(), answer.clone()));
        answer
    }

    async fn ask(&self, token: &str) -> Result<Claims, String> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("token review: {e}"))?;
        let status = done.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(status
                .error
                .unwrap_or_else(|| "the API server did not authenticate the token".into()));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == AUDIENCE)
        {
            return Err(format!("the token is not for audience {AUDIENCE}"));
        }
        let user = status.user.unwrap_or_default();
        let node = user
            .extra
            .unwrap_or_default()
            .get(NODE_EXTRA)
            .and_then(|v| v.first().cloned());
        Ok(Claims {
            iss: "kubernetes".into(),
            sub: user.username.unwrap_or_default(),
            aud: vec![AUDIENCE.to_string()],
            iat: 0,
            exp: u64::MAX,
            kubernetes: Some(KubernetesClaims {
                node: node.map(|name| NodeClaim { name }),
            }),
        })
    }
}

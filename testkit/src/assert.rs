//! Assertions every test shares: the problem+json shape of an error, and no secret anywhere.

use serde_json::Value;

/// Asserts a problem+json response with the given status and code; returns the body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("application/problem+json".to_owned())
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    body
}

/// Asserts that none of `secrets` appears in `text`, nor (for JWTs) a signature on its own.
/// Never prints a secret: the message names its index only.
pub fn assert_no_secret(text: &str, secrets: &[String], what: &str) {
    for (n, secret) in secrets.iter().enumerate() {
        assert!(
            !text.contains(secret.as_str()),
            "secret #{n} leaked into {what}"
        );
        if let Some(sig) = secret
            .rsplit('.')
            .next()
            .filter(|s| s.len() > 20 && secret.contains('.'))
        {
            assert!(
                !text.contains(sig),
                "secret #{n}'s signature leaked into {what}"
            );
        }
    }
}

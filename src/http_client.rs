//! The one place outgoing HTTP clients are configured: rustls with the ring provider, no
//! redirects (a redirect from Intellia or an identity provider is never followed with our
//! credentials), and an honest User-Agent. `HTTPS_PROXY`/`NO_PROXY` are honoured, as egress proxies
//! in clusters expect. Every outgoing request goes through `traces::traced`, which carries the
//! current trace on (W3C `traceparent`) when traces are on.

use std::sync::Once;

static CRYPTO_PROVIDER: Once = Once::new();

/// Installs ring as the process-wide rustls provider. reqwest's `rustls-no-provider` feature
/// needs it before any client is built; installing twice is harmless.
pub fn install_crypto_provider() {
    CRYPTO_PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("intellia-token-broker/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
}

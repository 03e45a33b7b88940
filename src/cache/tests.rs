use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

fn minted(ttl: Duration) -> MintedToken {
    MintedToken {
        token: SecretString::from(format!("tok-{}", rand::random::<u32>())),
        expires_at: OffsetDateTime::now_utc() + ttl,
        user_id: "u".into(),
        organization_id: "o".into(),
        role: "chat".into(),
    }
}

fn settings(enabled: bool) -> CacheSettings {
    CacheSettings {
        enabled,
        min_remaining_secs: crate::config::Bounded::new::<900>(),
        max_entries: crate::config::Bounded::new::<100>(),
    }
}

fn cache(enabled: bool) -> TokenCache {
    TokenCache::new(&settings(enabled), None, Duration::from_secs(5))
}

fn ok(minted: MintedToken) -> Result<MintedToken, &'static str> {
    Ok(minted)
}

fn user(id: &str) -> UserId {
    UserId::parse(id.to_owned()).expect("valid id")
}

#[tokio::test]
async fn second_request_is_served_from_cache() {
    let cache = cache(true);
    let calls = AtomicU32::new(0);
    for expected in [Provenance::Minted, Provenance::Cached] {
        let (_, p) = cache
            .get_or_mint(&user("alice"), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                ok(minted(Duration::from_secs(7200)))
            })
            .await
            .unwrap();
        assert_eq!(p, expected);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn token_below_min_remaining_is_not_reused() {
    let cache = cache(true);
    let calls = AtomicU32::new(0);
    for _ in 0..2 {
        cache
            .get_or_mint(&user("bob"), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                ok(minted(Duration::from_secs(600)))
            })
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let cache = cache(true);
    let err = cache
        .get_or_mint(&user("carol"), || async {
            Err::<MintedToken, &str>("upstream timed out")
        })
        .await
        .unwrap_err();
    assert_eq!(err, CacheError::Mint("upstream timed out"));
    let (_, p) = cache
        .get_or_mint(&user("carol"), || async {
            ok(minted(Duration::from_secs(7200)))
        })
        .await
        .unwrap();
    assert_eq!(p, Provenance::Minted);
}

#[tokio::test]
async fn concurrent_requests_share_one_mint() {
    let cache = Arc::new(cache(true));
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let cache = Arc::clone(&cache);
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_mint(&user("dave"), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ok(minted(Duration::from_secs(7200)))
                })
                .await
                .map(|(t, _)| t.minted.expires_at)
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disabled_cache_always_mints() {
    let cache = cache(false);
    let calls = AtomicU32::new(0);
    for _ in 0..3 {
        let (_, p) = cache
            .get_or_mint(&user("erin"), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                ok(minted(Duration::from_secs(7200)))
            })
            .await
            .unwrap();
        assert_eq!(p, Provenance::Minted);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

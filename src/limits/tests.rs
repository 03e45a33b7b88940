use super::*;
use crate::config::{PerMinuteLimit, PerSecondLimit};

fn user(id: &str) -> UserId {
    UserId::parse(id.to_owned()).expect("valid id")
}

fn limits(per_minute: u64, burst: u64) -> Limits {
    let count = |n: u64| crate::config::Count::try_from(n).expect("in range");
    Limits::new(
        &RateLimitSettings {
            per_user: Some(PerMinuteLimit {
                per_minute: count(per_minute),
                burst: count(burst),
            }),
            per_ip: None,
            upstream: Some(PerSecondLimit {
                per_second: count(1),
                burst: count(2),
            }),
        },
        None,
        1,
    )
}

fn for_user(user: &UserId) -> RequestKeys<'_> {
    RequestKeys {
        ip: None,
        user: Some(user),
    }
}

#[tokio::test]
async fn admits_exactly_burst_then_rejects() {
    let l = limits(10, 5);
    let alice = user("alice");
    for n in 0..5u32 {
        let h = l
            .check(for_user(&alice))
            .await
            .expect("within burst")
            .expect("configured");
        assert_eq!(h.remaining, 4 - n);
        assert_eq!(h.quota, 5);
        assert_eq!(h.window, 60);
    }
    let Err(LimitError::Limited(rejected)) = l.check(for_user(&alice)).await else {
        panic!("burst spent");
    };
    assert_eq!(rejected.remaining, 0);
    // 10 per minute refills one cell every 6 s.
    assert!((1..=6).contains(&rejected.retry_after_secs), "{rejected:?}");
    // Another key has its own bucket.
    assert!(l.check(for_user(&user("bob"))).await.is_ok());
}

#[tokio::test]
async fn reset_counts_seconds_to_full_bucket() {
    let l = limits(60, 3);
    let carol = user("carol");
    let first = l.check(for_user(&carol)).await.unwrap().unwrap();
    assert_eq!(first.remaining, 2);
    assert_eq!(first.reset_secs, 1);
    let second = l.check(for_user(&carol)).await.unwrap().unwrap();
    assert_eq!(second.reset_secs, 2);
}

#[tokio::test]
async fn upstream_limit_is_global() {
    let l = limits(10, 5);
    assert!(l.check_upstream().await.is_ok());
    assert!(l.check_upstream().await.is_ok());
    assert!(l.check_upstream().await.is_err());
}

#[tokio::test]
async fn absent_limits_pass() {
    let l = Limits::new(&RateLimitSettings::default(), None, 1);
    let x = user("x");
    let keys = RequestKeys {
        ip: Some(IpAddr::from([127, 0, 0, 1])),
        user: Some(&x),
    };
    assert_eq!(l.check(keys).await, Ok(None));
    assert!(l.check_upstream().await.is_ok());
}

#[test]
fn local_share_divides_by_replicas() {
    let shape = Shape::new("user", 60, 10, 5, 3);
    assert_eq!(shape.local_burst, 1);
    assert_eq!(shape.shared_burst, 5);
    assert_eq!(shape.shared_interval, Duration::from_secs(6));
}

#[test]
fn tightest_prefers_fewest_remaining() {
    let a = RateLimitStatus {
        name: "ip",
        quota: 20,
        window: 60,
        remaining: 19,
        reset_secs: 3,
        retry_after_secs: 1,
    };
    let b = RateLimitStatus {
        name: "user",
        remaining: 2,
        ..a
    };
    assert_eq!(RateLimitStatus::tightest(Some(a), b).name, "user");
    assert_eq!(RateLimitStatus::tightest(Some(b), a).name, "user");
}

#[test]
fn ipv6_clients_share_their_prefix_bucket() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(bucket_of(a, 64), bucket_of(b, 64));
    assert_ne!(bucket_of(a, 64), bucket_of(c, 64));
    assert_ne!(bucket_of(a, 128), bucket_of(b, 128));
    assert_eq!(bucket_of(a, 128), a);
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(bucket_of(v4, 64), v4);
}

//! The test kit's `redis-server` launchers work as documented: each kind answers `redis-cli` the
//! way its clients will have to talk to it, refuses the ones that do not, and stops on `kill`.

use testkit::redis::{RedisCluster, RedisServer};

#[test]
fn a_plain_server_answers_and_stops_on_kill() {
    let mut redis = RedisServer::start();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    redis.kill();
    assert!(!redis.is_running());
    assert_eq!(
        redis.cli(&["PING"]).trim(),
        "",
        "nothing answers after kill"
    );
    redis.restart();
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG", "back on the same port");
}

#[test]
fn a_tls_server_answers_only_over_tls_with_its_ca() {
    let redis = RedisServer::builder().tls().start();
    assert!(redis.url().starts_with("rediss://127.0.0.1:"));
    let tls = redis.tls().unwrap();
    assert!(tls.ca.is_file() && tls.cert.is_file() && tls.key.is_file());
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    // Plain text on the TLS port gets no answer.
    let plain = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "PING"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "PONG");
    // Nor does TLS with a CA that did not sign the server's certificate.
    let other = RedisServer::builder().tls().start();
    let wrong_ca = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "--tls"])
        .arg("--cacert")
        .arg(&other.tls().unwrap().ca)
        .arg("PING")
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&wrong_ca.stdout).trim(), "PONG");
}

#[test]
fn an_acl_server_answers_its_user_only() {
    let redis = RedisServer::builder().user("broker", "s3cret-pw").start();
    assert_eq!(redis.user(), Some(("broker", "s3cret-pw")));
    assert_eq!(
        redis.url_with_credentials(),
        format!("redis://broker:s3cret-pw@127.0.0.1:{}", redis.port())
    );
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    assert_eq!(redis.cli(&["ACL", "WHOAMI"]).trim(), "broker");
    // The default user is off: without credentials nothing is allowed.
    let anonymous = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "PING"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&anonymous.stdout).into_owned()
        + &String::from_utf8_lossy(&anonymous.stderr);
    assert!(said.contains("NOAUTH"), "{said}");
    // A wrong password is refused.
    let wrong = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args([
            "--user",
            "broker",
            "--pass",
            "wrong",
            "--no-auth-warning",
            "PING",
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&wrong.stdout).trim(), "PONG");
}

#[test]
fn a_three_node_cluster_spreads_keys_and_survives_a_node_restart() {
    let mut cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 3);
    assert!(cluster.nodes().iter().all(|n| n.port() <= 55535));
    let info = cluster.cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    // Keys in every slot range: `-c` follows the MOVED redirections.
    for n in 0..30 {
        assert_eq!(cluster.cli(&["SET", &format!("key-{n}"), "v"]).trim(), "OK");
    }
    let counts: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|node| node.cli(&["DBSIZE"]).trim().parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 30, "{counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "every node holds keys: {counts:?}"
    );

    // A killed node is gone; restarted, it rejoins with its slots.
    cluster.node_mut(1).kill();
    assert!(!cluster.node_mut(1).is_running());
    cluster.node_mut(1).restart();
    cluster.wait_ok(std::time::Duration::from_secs(20));
    assert_eq!(cluster.cli(&["SET", "after-restart", "v"]).trim(), "OK");
}

#[test]
fn a_tls_cluster_with_an_acl_user_answers_that_user_over_tls() {
    let cluster =
        RedisCluster::start_with(|| RedisServer::builder().tls().user("broker", "cluster-pw"));
    assert!(
        cluster
            .urls()
            .iter()
            .all(|u| u.starts_with("rediss://127.0.0.1:"))
    );
    let info = cluster.cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    for n in 0..10 {
        assert_eq!(cluster.cli(&["SET", &format!("k{n}"), "v"]).trim(), "OK");
    }
    assert_eq!(cluster.cli(&["ACL", "WHOAMI"]).trim(), "broker");
}

#!/usr/bin/env python3
"""Recomputes the sizing table of docs/capacity.md from the figures in BENCHMARKS.md.

    python3 scripts/capacity.py            # the markdown table
    python3 scripts/capacity.py --explain  # also the intermediate figures

Inputs: the "Capacity inputs" table of BENCHMARKS.md (rows `| `name` | number | ... |`), measured
by `./scripts/bench.sh load redis`. The traffic model below is an assumption, stated in
docs/capacity.md; change it here and the table follows.
"""

import math
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Traffic model (docs/capacity.md, "Traffic model").
SESSIONS_PER_USER_DAY = 2.0
PAGE_LOADS_PER_SESSION = 5.0  # each page load asks the broker once (the client caches per page)
SESSION_MINUTES = 20.0
TOKEN_MINUTES = 120.0  # Intellia's token lifetime
CLIENT_REFRESH_MARGIN_MIN = 5.0  # the JS client refreshes 5 min before expiry
BROKER_MIN_REMAINING_MIN = 15.0  # [cache] min_remaining_secs = 900: reuse while >= 15 min left
PEAK_HOUR_SHARE = 0.12  # the busiest hour carries 12 % of a day's traffic
PEAK_SECOND_FACTOR = 2.0  # the busiest second of that hour, over its average
HEADROOM = 2.0  # size for 50 % utilisation at peak
MIN_REPLICAS = 2  # availability
SEALED_TOKEN_BYTES = 1024  # sealed JSON (token ~600 B) + key + Redis overhead per entry
LIMITER_KEY_BYTES = 120  # key + value + TTL overhead
LIMITER_KEY_TTL_S = 30.0  # a GCRA key lives until its bucket refills (per_user 10/min burst 5)
INTELLIA_QUOTA_PER_S = 50.0  # the organization's assume-role quota (the example's upstream limit)
SHARD_MEMORY_BYTES = 8 * 2**30  # a managed shard size that is common and cheap (e.g. 8 GB)
OPS_PER_MINT = 5  # GET (miss), SET NX (lock), EVALSHA (upstream limit), SET (sealed), EVALSHA (unlock)
SIZES = [10_000, 1_000_000, 10_000_000]


def inputs() -> dict:
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text.split("## Capacity inputs", 1)[-1]
    found = {}
    for name, value in re.findall(r"^\| `([a-z_]+)` \| ([0-9.]+) \|", section, re.M):
        found[name] = float(value)
    need = ["replica_token_rps", "redis_ops_per_core_s", "cluster_calls_per_request"]
    missing = [n for n in need if n not in found]
    if missing:
        sys.exit(f"BENCHMARKS.md, 'Capacity inputs': missing {missing}")
    return found


def size(users: int, m: dict) -> dict:
    refreshes = SESSION_MINUTES / (TOKEN_MINUTES - CLIENT_REFRESH_MARGIN_MIN)
    requests_day = users * SESSIONS_PER_USER_DAY * (PAGE_LOADS_PER_SESSION + refreshes)
    reuse_min = TOKEN_MINUTES - BROKER_MIN_REMAINING_MIN
    mints_day = users * SESSIONS_PER_USER_DAY * (1 + SESSION_MINUTES / reuse_min)
    peak = PEAK_HOUR_SHARE / 3600 * PEAK_SECOND_FACTOR
    token_rps = requests_day * peak
    mint_rps = mints_day * peak
    replicas = max(MIN_REPLICAS, math.ceil(token_rps * HEADROOM / m["replica_token_rps"]))
    # Every token request: the limits (one script call; per slot in a cluster). A replica that has
    # not seen the user's token yet reads it once (GET) per mint: at most replicas - 1 reads per
    # mint, and never more than the requests that mint serves.
    per_mint_requests = requests_day / mints_day
    gets_rps = mint_rps * min(replicas - 1, per_mint_requests)
    standalone_ops = token_rps + gets_rps + mint_rps * OPS_PER_MINT
    cluster_ops = token_rps * m["cluster_calls_per_request"] + gets_rps + mint_rps * OPS_PER_MINT
    cluster = standalone_ops * HEADROOM > m["redis_ops_per_core_s"]
    ops = cluster_ops if cluster else standalone_ops
    live_tokens = mint_rps / PEAK_SECOND_FACTOR * reuse_min * 60
    memory = live_tokens * SEALED_TOKEN_BYTES + token_rps * 2 * LIMITER_KEY_TTL_S * LIMITER_KEY_BYTES
    cpu_shards = math.ceil(ops * HEADROOM / m["redis_ops_per_core_s"])
    memory_shards = math.ceil(memory * HEADROOM / SHARD_MEMORY_BYTES)
    if max(cpu_shards, memory_shards) > 1 and not cluster:
        cluster = True
        ops = cluster_ops
        cpu_shards = math.ceil(ops * HEADROOM / m["redis_ops_per_core_s"])
    shards = max(1, cpu_shards, memory_shards)
    quota_use = mint_rps / INTELLIA_QUOTA_PER_S
    replica_use = token_rps / (replicas * m["replica_token_rps"])
    redis_use = max(
        ops / (shards * m["redis_ops_per_core_s"]), memory / (shards * SHARD_MEMORY_BYTES)
    )
    if max(quota_use, replica_use, redis_use) < 0.5:
        first = f"nothing near a limit (Intellia quota {quota_use:.0%}, broker {replica_use:.0%})"
    elif quota_use >= 1:
        first = f"Intellia quota ({quota_use:.1f}x of {INTELLIA_QUOTA_PER_S:.0f}/s)"
    else:
        first = max(
            [
                (quota_use, f"Intellia quota ({quota_use:.0%})"),
                (replica_use, f"broker CPU ({replica_use:.0%} of {replicas} replicas)"),
                (redis_use, f"Redis CPU ({redis_use:.0%} of {shards} shard(s))"),
            ]
        )[1]
    return {
        "users": users,
        "token_rps": token_rps,
        "mint_rps": mint_rps,
        "redis_ops": ops,
        "memory": memory,
        "replicas": replicas,
        "shards": shards,
        "cluster": cluster,
        "first": first,
        "gets_rps": gets_rps,
        "live_tokens": live_tokens,
    }


def human(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} G"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return f"{n:.1f}"


def main() -> None:
    m = inputs()
    print(
        "| daily users | peak token req/s | peak mints/s (Intellia) | peak Redis ops/s | Redis memory "
        "| broker replicas | Redis shards | saturates first |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for users in SIZES:
        r = size(users, m)
        shards = f"{r['shards']} ({'cluster' if r['cluster'] else 'standalone'})"
        print(
            f"| {human(users)} | {r['token_rps']:.0f} | {r['mint_rps']:.1f} | {r['redis_ops']:.0f} "
            f"| {human(r['memory'])}B | {r['replicas']} | {shards} | {r['first']} |"
        )
    if "--explain" in sys.argv:
        print()
        print(f"inputs from BENCHMARKS.md: {m}")
        for users in SIZES:
            print(size(users, m))


if __name__ == "__main__":
    main()

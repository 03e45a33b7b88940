#!/usr/bin/env python3
"""Offline check of renovate.json: well-formed, and covering every dependency file of the repository.

Renovate's own validator is the npm package `renovate` (44.x: about 120 direct dependencies, and it
requires Node 24 while CI has Node 20), too heavy to install for one file. This checks what would
make Renovate silently skip something:
  * strict JSON (no comments, no duplicate keys), `$schema`, only known top-level options;
  * every dependency file tracked by git (Cargo.toml, package.json with its lockfile, requirements
    files, Dockerfile, Chart.yaml) is handled by an enabled manager and not under `ignorePaths`
    (config:recommended alone would ignore everything under tests/);
  * Dockerfile digests are pinned (`dockerfile.pinDigests`);
  * each custom regex manager compiles and finds the versions it is meant to keep current: every
    `cargo install --locked NAME@...` pin in the Dockerfile and scripts/test.sh, and the toolchain.
--self-test runs the same checks on broken copies of the config and fails unless each is caught.

Usage: renovate_check.py [--self-test] [REPO_ROOT]
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

# Top-level options this repository uses or may reasonably use; a typo shows up as unknown.
KNOWN = {
    "$schema", "description", "extends", "timezone", "schedule", "prConcurrentLimit", "prHourlyLimit",
    "ignorePaths", "enabledManagers", "lockFileMaintenance", "cargo", "npm", "dockerfile",
    "pip_requirements", "helmv3", "helm-values", "customManagers", "packageRules", "labels",
    "rangeStrategy", "automerge", "dependencyDashboard", "pinDigests", "osvVulnerabilityAlerts",
    "vulnerabilityAlerts", "minimumReleaseAge", "semanticCommits", "github-actions",
}
# Renovate's default managerFilePatterns for the managers this repository needs.
DEFAULT_PATTERNS = {
    "cargo": r"(^|/)Cargo\.toml$",
    "npm": r"(^|/)package\.json$",
    "pip_requirements": r"(^|/)[\w-]*requirements([-.]\w+)?\.(txt|pip)$",
    "dockerfile": r"(^|/|\.)([Dd]ocker|[Cc]ontainer)file$",
    "helmv3": r"(^|/)Chart\.ya?ml$",
    "github-actions": r"(^|/)\.github/workflows/[^/]+\.ya?ml$",
}
PIN = re.compile(r"cargo install --locked [^\n]*?\b([a-z0-9_-]+)@")


def js_regex(pattern: str) -> re.Pattern[str]:
    """A Renovate regex (JavaScript syntax, `/.../` or bare) as a Python one."""
    if len(pattern) > 1 and pattern.startswith("/") and pattern.rstrip("gimsuy").endswith("/"):
        pattern = pattern[1 : pattern.rstrip("gimsuy").rindex("/")]
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z])", "(?P<", pattern))


def strict_json(text: str) -> dict:
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"duplicate keys {sorted(dup)}")
        return dict(pairs)

    return json.loads(text, object_pairs_hook=no_duplicates)


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def check(cfg: dict, repo: Path, files: list[str]) -> list[str]:
    problems: list[str] = []
    if not str(cfg.get("$schema", "")).endswith("renovate-schema.json"):
        problems.append("$schema is not Renovate's")
    unknown = sorted(set(cfg) - KNOWN)
    if unknown:
        problems.append(f"unknown top-level options {unknown}")
    if not isinstance(cfg.get("extends", []), list):
        problems.append("extends is not a list")

    enabled = cfg.get("enabledManagers")
    ignore = cfg.get("ignorePaths")
    if ignore is None:
        problems.append("no ignorePaths: config:recommended's default ignores **/tests/**")
        ignore = ["**/tests/**"]
    for manager, pattern in DEFAULT_PATTERNS.items():
        rx = re.compile(pattern)
        for f in (f for f in files if rx.search(f)):
            if enabled is not None and manager not in enabled:
                problems.append(f"{f}: manager {manager} not enabled")
            hit = [g for g in ignore if fnmatch.fnmatch(f, g) or fnmatch.fnmatch("/" + f, g)]
            if hit:
                problems.append(f"{f}: ignored by ignorePaths {hit}")
    for f in files:
        if f.endswith("package.json") and (repo / f).read_text().find("ependencies") >= 0:
            if f.replace("package.json", "package-lock.json") not in files:
                problems.append(f"{f}: has dependencies but no package-lock.json (nothing to keep pinned)")
    if "helm-values" not in (enabled or ["helm-values"]):
        problems.append("manager helm-values not enabled (images in the chart's values)")
    if (cfg.get("dockerfile") or {}).get("pinDigests") is not True:
        problems.append("dockerfile.pinDigests is not true: base images would drift from their digests")

    # The custom managers must find each `cargo install --locked NAME@` pin and the toolchain.
    wanted: dict[str, set[str]] = {}
    for f in ("Dockerfile", "scripts/test.sh"):
        if f in files:
            wanted[f] = set(PIN.findall((repo / f).read_text()))
    if "rust-toolchain.toml" in files:
        wanted["rust-toolchain.toml"] = {"rust"}
    found: dict[str, set[str]] = {f: set() for f in wanted}
    for i, cm in enumerate(cfg.get("customManagers", [])):
        if cm.get("customType") != "regex":
            problems.append(f"customManagers[{i}]: customType {cm.get('customType')!r}, want regex")
            continue
        try:
            file_rx = [js_regex(p) for p in cm.get("managerFilePatterns", [])]
            match_rx = [js_regex(p) for p in cm.get("matchStrings", [])]
        except re.error as e:
            problems.append(f"customManagers[{i}]: a regex does not compile: {e}")
            continue
        if not file_rx or not match_rx:
            problems.append(f"customManagers[{i}]: needs managerFilePatterns and matchStrings")
        for f in wanted:
            if not any(r.search(f) for r in file_rx):
                continue
            text = (repo / f).read_text()
            for r in match_rx:
                for m in r.finditer(text):
                    g = m.groupdict()
                    for field in ("datasource", "depName", "currentValue"):
                        if not g.get(field) and not cm.get(f"{field}Template"):
                            problems.append(f"customManagers[{i}] on {f}: no {field} for {m.group(0)!r}")
                    found[f].add(g.get("depName") or cm.get("depNameTemplate", ""))
    for f, names in wanted.items():
        missing = sorted(names - found[f])
        if missing:
            problems.append(f"{f}: version pins of {missing} are seen by no custom manager")
    return problems


def mutants(cfg: dict) -> list[tuple[str, dict]]:
    out = []

    def mut(name, fn):
        c = copy.deepcopy(cfg)
        fn(c)
        out.append((name, c))

    mut("tests ignored again", lambda c: c.update(ignorePaths=["**/node_modules/**", "**/tests/**"]))
    mut("pip manager dropped", lambda c: c["enabledManagers"].remove("pip_requirements"))
    mut("no digest pinning", lambda c: c["dockerfile"].update(pinDigests=False))
    mut("typo in an option", lambda c: c.update(enabledManager=c.pop("enabledManagers")))
    mut("custom manager misses the Dockerfile", lambda c: c["customManagers"][0].update(managerFilePatterns=["/^scripts/test\\.sh$/"]))
    mut("custom manager regex broken", lambda c: c["customManagers"][0].update(matchStrings=["(?<depName>unclosed"]))
    return out


def main(argv: list[str]) -> int:
    selftest = "--self-test" in argv
    rest = [a for a in argv if a != "--self-test"]
    repo = Path(rest[0]) if rest else Path(__file__).resolve().parents[2]
    try:
        cfg = strict_json((repo / "renovate.json").read_text())
    except (OSError, ValueError) as e:
        print(f"FAIL renovate.json: not well-formed: {e}")
        return 1
    files = tracked_files(repo)
    problems = check(cfg, repo, files)
    for p in problems:
        print(f"FAIL renovate.json: {p}")
    if not problems:
        print(
            "PASS renovate.json: well-formed; cargo, npm, pip, Dockerfile (digests pinned), Helm managers cover "
            "every dependency file; custom managers see the cargo-install pins and the toolchain"
        )
    if selftest:
        for name, c in mutants(cfg):
            if check(c, repo, files):
                print(f"PASS self-test: broken config {name!r} rejected")
            else:
                print(f"FAIL self-test: broken config {name!r} passed")
                problems.append(name)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

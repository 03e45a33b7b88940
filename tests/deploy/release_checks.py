#!/usr/bin/env python3
"""Offline checks of what a release publishes, beside actionlint (called by tests/deploy/run.sh):

  * every action in .github/workflows is pinned by a full commit SHA with its tag in a comment
    (`uses: owner/repo@<40 hex> # vX.Y.Z`), and one action has one SHA across the workflows;
  * one version: Cargo.toml = the chart's appVersion = clients/js/package.json = the Dockerfile's
    default VERSION = the image named in the chart's artifacthub.io/images (release.yml refuses a
    tag that differs from the first three);
  * one license: LICENSE is the Apache License 2.0 text, and Cargo.toml (every crate), the
    chart's artifacthub.io/license, the image's org.opencontainers.image.licenses label and the
    npm package say Apache-2.0; the npm package ships the same LICENSE; the test kit and the fuzz
    crate are never published.
`--self-test` runs the checks on mutated copies and fails unless each mutation is caught.

Usage: release_checks.py [--self-test] REPO
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

LICENSE_ID = "Apache-2.0"
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (also what crates ship as LICENSE-APACHE).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
USES = re.compile(r"^\s*(?:-\s*)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(r"^(?P<action>[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+)@(?P<sha>[0-9a-f]{40})$")
FILES = [
    "Cargo.toml", "testkit/Cargo.toml", "fuzz/Cargo.toml", "Dockerfile", "LICENSE", "clients/js/LICENSE",
    "clients/js/package.json", "helm/intellia-token-broker/Chart.yaml",
]


def load(repo: Path) -> dict[str, str]:
    files = {f: (repo / f).read_text() for f in FILES}
    for wf in sorted((repo / ".github" / "workflows").glob("*.y*ml")):
        files[f".github/workflows/{wf.name}"] = wf.read_text()
    return files


def toml_value(text: str, key: str) -> str | None:
    m = re.search(rf'^{key} = "([^"]*)"$', text, re.M)
    return m.group(1) if m else None


def check(files: dict[str, str]) -> list[str]:
    problems: list[str] = []
    shas: dict[str, set[str]] = {}
    workflows = [f for f in files if f.startswith(".github/workflows/")]
    if not workflows:
        problems.append("no workflows under .github/workflows")
    for wf in workflows:
        for n, line in enumerate(files[wf].splitlines(), 1):
            m = USES.match(line)
            if not m or m.group("ref").startswith(("./", "docker://")):
                continue
            pinned = PINNED.match(m.group("ref"))
            if not pinned:
                problems.append(f"{wf}:{n}: {m.group('ref')} is not pinned by a full commit SHA")
                continue
            if not re.search(r"#\s*v\d+(\.\d+)*\b", m.group("rest")):
                problems.append(f"{wf}:{n}: {m.group('ref')}: say which release the SHA is (# vX.Y.Z)")
            shas.setdefault(pinned.group("action"), set()).add(pinned.group("sha"))
    for action, seen in shas.items():
        if len(seen) > 1:
            problems.append(f"{action} is pinned to {len(seen)} different SHAs: {sorted(seen)}")

    chart = yaml.safe_load(files["helm/intellia-token-broker/Chart.yaml"])
    package = json.loads(files["clients/js/package.json"])
    dockerfile = files["Dockerfile"]
    version = toml_value(files["Cargo.toml"], "version")
    docker_version = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.M)
    images = yaml.safe_load(chart.get("annotations", {}).get("artifacthub.io/images", "[]")) or []
    versions = {
        "Cargo.toml": version,
        "Chart.yaml appVersion": str(chart.get("appVersion")),
        "clients/js/package.json": package.get("version"),
        "Dockerfile ARG VERSION": docker_version.group(1) if docker_version else None,
    }
    for img in images:
        versions[f"artifacthub.io/images {img.get('name')}"] = str(img.get("image", "")).rsplit(":", 1)[-1]
    if not images:
        problems.append("Chart.yaml: no artifacthub.io/images annotation")
    if len(set(versions.values())) != 1:
        problems.append(f"versions differ: {versions}")

    if hashlib.sha256(files["LICENSE"].encode()).hexdigest() != APACHE_2_SHA256:
        problems.append("LICENSE is not the Apache License 2.0 text")
    if files["clients/js/LICENSE"] != files["LICENSE"]:
        problems.append("clients/js/LICENSE differs from LICENSE (the npm package ships it)")
    licenses = {
        "Cargo.toml": toml_value(files["Cargo.toml"], "license"),
        "testkit/Cargo.toml": toml_value(files["testkit/Cargo.toml"], "license"),
        "fuzz/Cargo.toml": toml_value(files["fuzz/Cargo.toml"], "license"),
        "Chart.yaml artifacthub.io/license": chart.get("annotations", {}).get("artifacthub.io/license"),
        "clients/js/package.json": package.get("license"),
    }
    label = re.search(r'org\.opencontainers\.image\.licenses="([^"]*)"', dockerfile)
    licenses["Dockerfile label"] = label.group(1) if label else None
    wrong = {k: v for k, v in licenses.items() if v != LICENSE_ID}
    if wrong:
        problems.append(f"not {LICENSE_ID}: {wrong}")
    if package.get("private"):
        problems.append("clients/js/package.json is private: it cannot be published")
    for crate in ("testkit/Cargo.toml", "fuzz/Cargo.toml"):
        if not re.search(r"^publish = false$", files[crate], re.M):
            problems.append(f"{crate}: publish = false is missing (a test crate is never published)")
    return problems


def mutations(files: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    wf = next(f for f in files if f.startswith(".github/workflows/"))
    out = []

    def mutate(name: str, path: str, old: str, new: str) -> None:
        text, n = re.subn(old, new, files[path], count=1, flags=re.M)
        assert n, f"self-test: mutation {name!r} matches nothing in {path} (update it)"
        out.append((name, files | {path: text}))

    mutate("an action by tag", wf, r"@[0-9a-f]{40}", "@v7")
    mutate("an action by a short SHA", wf, r"@([0-9a-f]{12})[0-9a-f]{28}", r"@\1")
    mutate("a SHA without its tag", wf, r"(@[0-9a-f]{40})\s*#.*$", r"\1")
    mutate("the chart's appVersion behind", "helm/intellia-token-broker/Chart.yaml", r'^appVersion: ".*"$',
           'appVersion: "0.0.1"')
    mutate("the npm package's version behind", "clients/js/package.json", r'"version": "[^"]*"', '"version": "0.0.1"')
    mutate("the Artifact Hub image tag behind", "helm/intellia-token-broker/Chart.yaml",
           r"(image: \S+):[0-9.]+$", r"\1:0.0.1")
    mutate("the npm package UNLICENSED", "clients/js/package.json", r'"license": "[^"]*"', '"license": "UNLICENSED"')
    mutate("the npm package private", "clients/js/package.json", r'"license":', '"private": true, "license":')
    mutate("the image label MIT", "Dockerfile", r'image\.licenses="[^"]*"', 'image.licenses="MIT"')
    mutate("an edited LICENSE", "LICENSE", r"Version 2\.0, January 2004", "Version 2.0, January 2005")
    mutate("the test kit publishable", "testkit/Cargo.toml", r"^publish = false\n", "")
    return out


def main(argv: list[str]) -> int:
    selftest = "--self-test" in argv
    rest = [a for a in argv if a != "--self-test"]
    repo = Path(rest[0]) if rest else Path(__file__).resolve().parents[2]
    files = load(repo)
    problems = check(files)
    for p in problems:
        print(f"FAIL release metadata: {p}")
    if not problems:
        print("PASS release metadata: actions pinned by SHA (tag in a comment), one version, Apache-2.0 everywhere")
    if selftest:
        for name, mutated in mutations(files):
            found = check(mutated)
            if found:
                print(f"PASS self-test: {name} refused ({found[0][:120]})")
            else:
                problems.append(f"self-test: {name} passed the checks")
                print(f"FAIL self-test: {name} passed the checks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

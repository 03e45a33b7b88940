#!/usr/bin/env python3
"""Static and stubbed checks of the Dockerfile's multi-arch and supply-chain contract (issue #17).

No Docker engine and no arm64 toolchain are available where this runs, so the builder stage cannot be
built for arm64. Instead:
  * every FROM must resolve (through ARG defaults) to `image:tag@sha256:<64 hex>`;
  * the builder must run on $BUILDPLATFORM, the runtime stage on the target platform, with no RUN
    (nothing to emulate) and a non-root USER;
  * the builder's RUN steps are executed by /bin/sh for each (TARGETARCH, BUILDARCH) pair, exactly as
    written, with apt-get, rustup, rm and cargo replaced by stubs that record their arguments and
    environment; the records must show the right target triple, cross linker and C compiler, jemalloc
    built for 64K pages on arm64, `cargo auditable build`, and an unknown TARGETARCH must stop the
    build with a message;
  * the dependency layer: the builder copies the manifests alone (COPY of files, run here from the
    repository), builds every dependency around stub sources (one per crate root and per declared
    bench, recorded by the cargo stub) before `COPY . .`, then touches the crate roots so the real
    build does not take the stub for up to date.
`--self-test` also runs the checks on mutated copies of the Dockerfile and fails unless each mutation
is caught, so a check that cannot fail does not go unnoticed.

Usage: dockerfile_checks.py [--self-test] [DOCKERFILE]
"""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:\d+)?(/[a-z0-9._-]+)*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")
TRIPLES = {"amd64": "x86_64-unknown-linux-gnu", "arm64": "aarch64-unknown-linux-gnu"}
GNU = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
CROSS_PACKAGES = {
    "amd64": {"gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"},
    "arm64": {"gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"},
}
BINARY = "intellia-token-broker"
# Where the builder leaves its state between RUN steps, and its output; rewritten into a temp dir for
# the stubbed run, so nothing on this machine is written.
STATE_PATHS = ("/tmp/target.env", "/out")

ARM64_NOTE = (
    "NOTE arm64: the arm64 image itself was not built here: no Docker engine or emulation, and no "
    "rust-std for aarch64-unknown-linux-gnu at rustc 1.95 is reachable (rustup cannot download; "
    "Debian bookworm ships rustc 1.63 only). Its builder steps were run with stubbed "
    "apt-get/rustup/cargo instead; build it for real with `docker buildx build --platform linux/arm64`."
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by the parser
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    if buf:
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def parse_arg(rest: str) -> tuple[str, str | None]:
    name, eq, value = rest.partition("=")
    return name.strip(), (value.strip().strip('"') if eq else None)


def substitute(value: str, args: dict[str, str | None]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return args.get(name) or ""

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


class Stage:
    def __init__(self, from_args: str):
        tokens = from_args.split()
        self.flags = [t for t in tokens if t.startswith("--")]
        rest = [t for t in tokens if not t.startswith("--")]
        self.image = rest[0] if rest else ""
        self.name = rest[2] if len(rest) >= 3 and rest[1].upper() == "AS" else ""
        self.body: list[tuple[str, str]] = []


def parse(text: str) -> tuple[dict[str, str | None], list[Stage]]:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            stages.append(Stage(rest))
        elif not stages:
            if keyword == "ARG":
                name, value = parse_arg(rest)
                global_args[name] = value
        else:
            stages[-1].body.append((keyword, rest))
    return global_args, stages


def run_flags_stripped(rest: str) -> str:
    """A RUN's shell command without its leading --mount/--network flags."""
    while rest.startswith("--"):
        _, _, rest = rest.partition(" ")
        rest = rest.lstrip()
    return rest


# A stand-in for apt-get, rustup, rm or cargo (shell, as it runs hundreds of times in the self-test):
# records its name, arguments and build environment; `cargo ... build --target T` leaves a stub binary
# where cargo would.
STUB = r"""#!/bin/sh
{
  printf 'CMD %s\n' "${0##*/}"
  for a in "$@"; do printf 'ARG %s\n' "$a"; done
  env | grep -E '^(RUSTFLAGS|JEMALLOC_SYS_WITH_LG_PAGE|CARGO_TARGET_[A-Z0-9_]+|CC_[a-z0-9_]+|AR_[a-z0-9_]+|[A-Z0-9_]+_JEMALLOC_SYS_WITH_LG_PAGE)=' | sed 's/^/ENV /'
  echo END
} >> "$STUB_LOG"
if [ "${0##*/}" = cargo ]; then
  build=; target=
  while [ $# -gt 0 ]; do
    case "$1" in build) build=1 ;; --target) target=$2; shift ;; esac
    shift
  done
  if [ -n "$build" ] && [ -n "$target" ]; then
    { find . -path ./target -prune -o -type f -print | sed 's#^\./#FILE #' | sort; echo END; } >> "$STUB_LOG"
    mkdir -p "target/$target/release"
    printf '#!/bin/sh\necho intellia-token-broker 0.0.0-stub\n' > "target/$target/release/intellia-token-broker"
    chmod 755 "target/$target/release/intellia-token-broker"
  fi
fi
"""


def read_stub_log(text: str) -> list[dict]:
    records, cur = [], None
    for line in text.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "FILE" and records:
            records[-1].setdefault("files", []).append(value)
            continue
        if kind == "CMD":
            cur = {"cmd": value, "args": [], "env": {}}
        elif kind == "ARG" and cur is not None:
            cur["args"].append(value)
        elif kind == "ENV" and cur is not None:
            k, _, v = value.partition("=")
            cur["env"][k] = v
        elif kind == "END" and cur is not None:
            records.append(cur)
            cur = None
    return records


def copy_from_context(rest: str, context: Path, src: Path) -> None:
    """A `COPY a b dest/` of files from the build context into the simulated WORKDIR (`COPY . .`
    and copies from other stages are left out: the whole tree is not needed to check the steps)."""
    if "--from=" in rest:
        return
    parts = [p for p in rest.split() if not p.startswith("--")]
    *sources, dest = parts
    if sources == ["."]:
        return
    for source in sources:
        origin = context / source
        if not origin.is_file():
            continue
        to = src / dest / Path(source).name if dest.endswith("/") or dest in (".", "./") else src / dest
        to.parent.mkdir(parents=True, exist_ok=True)
        to.write_bytes(origin.read_bytes())


def simulate(stage: Stage, stage_args: dict[str, str | None], target: str, build: str, work: Path,
             context: Path):
    """Runs the stage's RUN steps with stubs; returns (exit code, stderr, stub records, out dir)."""
    work.mkdir(parents=True)
    bindir = work / "stubs"
    bindir.mkdir()
    for name in ("apt-get", "rustup", "rm", "cargo"):
        p = bindir / name
        p.write_text(STUB)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    log = work / "stubs.log"
    log.touch()
    src = work / "src"
    src.mkdir()
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(work),
        "STUB_LOG": str(log),
        "TARGETARCH": target,
        "BUILDARCH": build,
        "TARGETPLATFORM": f"linux/{target}",
        "BUILDPLATFORM": f"linux/{build}",
        "LANG": "C",
    }
    for name, value in stage_args.items():
        if value is not None and name not in env:
            env[name] = value
    rc, err = 0, ""
    for keyword, rest in stage.body:
        if keyword == "ENV":
            for part in shlex.split(rest):
                k, _, v = part.partition("=")
                env[k] = v
            continue
        if keyword == "COPY":
            copy_from_context(rest, context, src)
            continue
        if keyword != "RUN":
            continue
        cmd = run_flags_stripped(rest)
        for path in STATE_PATHS:
            cmd = re.sub(rf"(?<![\w.\-/]){re.escape(path)}(?![\w.\-])", str(work) + path.replace("/", "_"), cmd)
        proc = subprocess.run(["/bin/sh", "-c", cmd], cwd=src, env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            rc, err = proc.returncode, proc.stderr
            break
    records = read_stub_log(log.read_text())
    return rc, err, records, Path(str(work) + "_out")


def bench_names(context: Path) -> list[str]:
    text = (context / "Cargo.toml").read_text()
    return re.findall(r'^\[\[bench\]\]\s*\nname = "([^"]+)"', text, re.M)


def dependency_layer_problems(builder: Stage) -> list[str]:
    """The order of the builder's steps: manifests, the dependency build, `COPY . .`, the real build."""
    problems = []
    steps = [(k, rest) for k, rest in builder.body if k in ("COPY", "RUN")]
    builds = [i for i, (k, rest) in enumerate(steps) if k == "RUN" and "cargo auditable build" in rest]
    copy_all = [i for i, (k, rest) in enumerate(steps)
                if k == "COPY" and "--from=" not in rest and rest.split()[-2:] == [".", "."]]
    if len(builds) != 2 or len(copy_all) != 1:
        return [f"builder: want a dependency build, one `COPY . .`, then the real build; found "
                f"{len(builds)} build step(s) and {len(copy_all)} `COPY . .`"]
    deps, real = builds
    if not deps < copy_all[0] < real:
        problems.append("builder: the dependency build must come before `COPY . .` (else any edit rebuilds "
                        "every dependency) and the real build after it")
    manifests = " ".join(rest for k, rest in steps[:deps] if k == "COPY")
    for need in ("Cargo.toml", "Cargo.lock", "testkit/Cargo.toml"):
        if need not in manifests.split():
            problems.append(f"builder: {need} is not copied before the dependency build")
    if not re.search(r"touch src/lib\.rs src/main\.rs.*cargo auditable build", steps[real][1]):
        problems.append("builder: the real build does not touch src/lib.rs and src/main.rs first (cargo would "
                        "take the stub build, newer than the copied sources, for up to date)")
    return problems


def check(text: str, work: Path, context: Path | None = None) -> list[str]:
    """Every problem found in the Dockerfile text; empty when it meets the contract."""
    context = context or Path(__file__).resolve().parents[2]
    problems: list[str] = []
    global_args, stages = parse(text)
    if len(stages) < 2:
        return [f"want a builder and a runtime stage, found {len(stages)} stage(s)"]
    names = {s.name for s in stages if s.name}

    for s in stages:
        image = substitute(s.image, global_args)
        if s.image in names:
            continue
        if not DIGEST_REF.match(image):
            problems.append(f"FROM {s.image} -> {image!r}: not pinned as image:tag@sha256:<index digest>")

    builder = next((s for s in stages if s.name == "builder"), None)
    runtime = stages[-1]
    if builder is None:
        return problems + ["no stage named builder (tests/deploy/run.sh replaces it by --build-context)"]
    if not any(re.fullmatch(r"--platform=\$\{?BUILDPLATFORM\}?", f) for f in builder.flags):
        problems.append("builder: FROM lacks --platform=$BUILDPLATFORM (it would be emulated per target)")
    if runtime.name != "runtime":
        problems.append(f"last stage is {runtime.name!r}, want runtime")
    if any(f.startswith("--platform") for f in runtime.flags):
        problems.append("runtime: FROM --platform set; it must follow the target platform")
    if any(k == "RUN" for k, _ in runtime.body):
        problems.append("runtime: has a RUN step (it would need emulation for a foreign platform)")
    users = [rest for k, rest in runtime.body if k == "USER"]
    if not users:
        problems.append("runtime: no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if user in ("0", "root") or not user.isdigit():
            problems.append(f"runtime: USER {users[-1]}; want a numeric non-root uid")
    if not any(k == "COPY" and "--from=builder" in r and f"/out/{BINARY}" in r for k, r in runtime.body):
        problems.append(f"runtime: does not COPY --from=builder /out/{BINARY} (the path run.sh provides)")

    stage_args: dict[str, str | None] = {}
    for k, rest in builder.body:
        if k == "ARG":
            name, value = parse_arg(rest)
            stage_args[name] = value if value is not None else global_args.get(name)
    for needed in ("TARGETARCH", "BUILDARCH"):
        if needed not in stage_args:
            problems.append(f"builder: no `ARG {needed}` (unset inside RUN otherwise)")
    version = stage_args.get("CARGO_AUDITABLE_VERSION")
    if not (version and re.fullmatch(r"\d+\.\d+\.\d+", version)):
        problems.append(f"builder: CARGO_AUDITABLE_VERSION={version!r}, want a pinned x.y.z")

    problems += dependency_layer_problems(builder)
    stubs = {"Cargo.toml", "Cargo.lock", "testkit/Cargo.toml", "src/lib.rs", "src/main.rs", "testkit/src/lib.rs"} | {
        f"benches/{b}.rs" for b in bench_names(context)}

    scenarios = [("amd64", "amd64"), ("arm64", "amd64"), ("arm64", "arm64"), ("amd64", "arm64")]
    for target, build in scenarios:
        where = f"builder for {target} on {build}"
        rc, err, records, out = simulate(builder, stage_args, target, build, work / f"{target}-on-{build}",
                                         context)
        if rc != 0:
            problems.append(f"{where}: a RUN step failed ({rc}): {err.strip()[-300:]}")
            continue
        triple = TRIPLES[target]
        cargo = [r for r in records if r["cmd"] == "cargo"]
        installs = [r for r in cargo if r["args"][:1] == ["install"]]
        if not any("--locked" in r["args"] and f"cargo-auditable@{version}" in r["args"] for r in installs):
            problems.append(f"{where}: no `cargo install --locked cargo-auditable@{version}`")
        builds = [r for r in cargo if "build" in r["args"]]
        if len(builds) != 2:
            problems.append(f"{where}: {len(builds)} cargo builds, want 2 (dependencies, then the crate)")
            continue
        deps_build, b = builds
        missing_stubs = sorted(stubs - set(deps_build.get("files", [])))
        if missing_stubs:
            problems.append(f"{where}: the dependency build lacks {missing_stubs} (cargo needs every declared "
                            f"target's file)")
        for one in builds:
            if one["args"][:2] != ["auditable", "build"]:
                problems.append(f"{where}: `cargo {' '.join(one['args'][:2])}`, want `cargo auditable build`")
            for flag in ("--release", "--locked"):
                if flag not in one["args"]:
                    problems.append(f"{where}: cargo build without {flag}")
            if "--target" not in one["args"] or one["args"][one["args"].index("--target") + 1] != triple:
                problems.append(f"{where}: cargo build not for --target {triple}: {one['args']}")
            if "+crt-static" not in one["env"].get("RUSTFLAGS", ""):
                problems.append(f"{where}: RUSTFLAGS lacks +crt-static (binary would not be static)")
        if deps_build["env"] != b["env"]:
            problems.append(f"{where}: the dependency build's environment differs from the real one's "
                            f"(every dependency would be built again): {deps_build['env']} vs {b['env']}")
        upper = triple.upper().replace("-", "_")
        lg_page = b["env"].get(f"{upper}_JEMALLOC_SYS_WITH_LG_PAGE", b["env"].get("JEMALLOC_SYS_WITH_LG_PAGE"))
        if target == "arm64" and lg_page != "16":
            problems.append(f"{where}: JEMALLOC_SYS_WITH_LG_PAGE={lg_page!r}, want 16 (runs on 4K/16K/64K-page kernels)")
        if target == "amd64" and lg_page is not None:
            problems.append(f"{where}: JEMALLOC_SYS_WITH_LG_PAGE={lg_page!r} set for amd64")
        rustup = [r["args"] for r in records if r["cmd"] == "rustup"]
        if ["target", "add", triple] not in rustup:
            problems.append(f"{where}: no `rustup target add {triple}`")
        apt = [a for r in records if r["cmd"] == "apt-get" for a in r["args"] if not a.startswith("-")]
        linker = b["env"].get(f"CARGO_TARGET_{upper}_LINKER")
        cc = b["env"].get(f"CC_{triple.replace('-', '_')}")
        if target != build:
            missing = CROSS_PACKAGES[target] - set(apt)
            if missing:
                problems.append(f"{where}: cross packages not installed: {sorted(missing)}")
            if linker != f"{GNU[target]}-gcc":
                problems.append(f"{where}: CARGO_TARGET_{upper}_LINKER={linker!r}, want {GNU[target]}-gcc")
            if cc != f"{GNU[target]}-gcc":
                problems.append(f"{where}: CC for {triple} is {cc!r}, want {GNU[target]}-gcc (ring, jemalloc)")
        elif apt or linker or cc:
            problems.append(f"{where}: native build installs or sets a cross toolchain ({apt}, {linker}, {cc})")
        if not (out / BINARY).is_file():
            problems.append(f"{where}: nothing at /out/{BINARY}")

    for odd in ("s390x", "riscv64", "arm"):
        where = f"builder for TARGETARCH={odd}"
        rc, err, records, _ = simulate(builder, stage_args, odd, "amd64", work / f"{odd}-on-amd64", context)
        if rc == 0:
            problems.append(f"{where}: the build went on; an unsupported architecture must fail it")
        elif odd not in err or "unsupported" not in err.lower():
            problems.append(f"{where}: failed without naming the architecture: {err.strip()[-200:]!r}")
        if any(r["cmd"] == "cargo" and "build" in r["args"] for r in records):
            problems.append(f"{where}: cargo build ran")
    return problems


# (name, old, new): each turns the real Dockerfile into one that must fail the checks.
MUTATIONS = [
    ("runtime base by tag only", r"(ARG RUNTIME_IMAGE=[^@\n]+)@sha256:[0-9a-f]{64}", r"\1"),
    ("builder without $BUILDPLATFORM", r"FROM --platform=\$BUILDPLATFORM ", "FROM "),
    ("unknown arch accepted", r"\*\) echo \"unsupported[^\n]*", "*) triple=x86_64-unknown-linux-gnu; gnu=x; cross= ;; \\\\"),
    ("arm64 mapped to the wrong triple", r"arm64\) triple=aarch64-unknown-linux-gnu", "arm64) triple=x86_64-unknown-linux-gnu"),
    ("no 64K pages for jemalloc", r"JEMALLOC_SYS_WITH_LG_PAGE=16", "JEMALLOC_SYS_WITH_LG_PAGE=12"),
    ("no cross linker", r"CARGO_TARGET_\$\{env_triple\}_LINKER", "CARGO_TARGET_${env_triple}_RUNNER"),
    ("plain cargo build", r"cargo auditable build", "cargo build"),
    ("cargo-auditable unpinned", r"ARG CARGO_AUDITABLE_VERSION=[0-9.]+", "ARG CARGO_AUDITABLE_VERSION=latest"),
    ("RUN in the runtime stage", r"\nUSER ", "\nRUN [\"/usr/local/bin/intellia-token-broker\", \"--version\"]\nUSER "),
    ("runtime as root", r"\nUSER 65532:65532", "\nUSER 0:0"),
    ("static linking dropped", r"-C target-feature=\+crt-static", "-C opt-level=3"),
    ("dependencies built after COPY . .", r"\nCOPY Cargo\.toml Cargo\.lock \./\n", "\nCOPY . .\nCOPY Cargo.toml Cargo.lock ./\n"),
    ("stub build taken for the real one", r"touch src/lib\.rs src/main\.rs", "true"),
    ("no stub for the benches", r"> \"benches/\$\{bench\}\.rs\"", "> /dev/null"),
    ("real build without crt-static", r"(&& touch src/lib\.rs src/main\.rs \\\n \&\& )RUSTFLAGS='-C target-feature=\+crt-static'", r"\1RUSTFLAGS='-C opt-level=3'"),
]


def self_test(text: str, work: Path) -> list[str]:
    problems = []
    for i, (name, old, new) in enumerate(MUTATIONS):
        mutated, n = re.subn(old, new, text, count=1)
        if n == 0:
            problems.append(f"self-test: mutation {name!r} matches nothing in the Dockerfile (update it)")
            continue
        found = check(mutated, work / f"mutant-{i}")
        if found:
            print(f"PASS self-test: mutant {name!r} rejected ({found[0]})")
        else:
            problems.append(f"self-test: mutant {name!r} passed the checks")
    return problems


def main(argv: list[str]) -> int:
    selftest = "--self-test" in argv
    rest = [a for a in argv if a != "--self-test"]
    path = Path(rest[0]) if rest else Path(__file__).resolve().parents[2] / "Dockerfile"
    text = path.read_text()
    with tempfile.TemporaryDirectory(prefix="itb-dockerfile-") as tmp:
        problems = check(text, Path(tmp) / "real")
        for p in problems:
            print(f"FAIL Dockerfile: {p}")
        if not problems:
            print(
                "PASS Dockerfile: bases pinned by digest, builder on $BUILDPLATFORM, TARGETARCH amd64/arm64 "
                "(others refused), cross linker + CC and jemalloc lg-page 16 for arm64, cargo auditable, "
                "static; runtime has no RUN and a non-root USER"
            )
        if selftest:
            st = self_test(text, Path(tmp))
            for p in st:
                print(f"FAIL {p}")
            problems += st
    print(ARM64_NOTE)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

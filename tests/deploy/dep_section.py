#!/usr/bin/env python3
"""Checks that a binary carries cargo-auditable's dependency list (ELF section `.dep-v0`).

`cargo auditable build` stores the resolved dependency tree, zlib-compressed JSON, in that section, so
scanners (`cargo audit bin`, trivy, grype, syft) can tell which crate versions a shipped binary holds
without its sources. The section is read here without binutils, the JSON is decoded, and the listed
packages must include the broker itself and the crates named on the command line.

Usage: dep_section.py BINARY [CRATE ...]    exit 0 when every CRATE is listed
"""

from __future__ import annotations

import json
import struct
import sys
import zlib


def elf_section(data: bytes, wanted: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    endian = "<" if data[5] == 1 else ">"
    shoff = struct.unpack_from(endian + "Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = struct.unpack_from(endian + "I", data, base)[0]
        offset, size = struct.unpack_from(endian + "QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = header(i)
        name = names[name_off : names.index(b"\0", name_off)].decode()
        if name == wanted:
            return data[offset : offset + size]
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1])
        return 2
    path, crates = argv[0], set(argv[1:])
    with open(path, "rb") as f:
        section = elf_section(f.read(), ".dep-v0")
    if section is None:
        print(f"  {path}: no .dep-v0 section (not built with `cargo auditable build`)")
        return 1
    info = json.loads(zlib.decompress(section))
    packages = info.get("packages", [])
    listed = {p.get("name") for p in packages}
    roots = [p["name"] for p in packages if p.get("root")]
    missing = sorted(crates - listed)
    if missing:
        print(f"  .dep-v0 lists {len(packages)} packages, not {', '.join(missing)}")
        return 1
    print(f".dep-v0: {len(packages)} packages (root: {', '.join(roots) or 'none'}), {len(section)} bytes compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

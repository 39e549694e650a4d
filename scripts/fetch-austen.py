#!/usr/bin/env python3
"""Prepare Jane Austen's six novels as plain-text files for gearbx tests and benchmarks.

Usage: python3 scripts/fetch-austen.py OUT_DIR

Source: the Debian package r-cran-janeaustenr (the R package "janeaustenr" by Julia
Silge, MIT licence; the novels themselves are public domain, from Project Gutenberg).
The .deb is fetched with `apt-get download` (not installed) and unpacked with
`dpkg-deb -x`. The text lives in usr/lib/R/site-library/janeaustenr/data/Rdata.rdb:
a sequence of records, each a 4-byte big-endian (uncompressed) length followed by a
zlib stream holding one R object in XDR serialization ("X\\n" header), here a
character vector with one element per line; the first line is the novel's title.

Writes OUT_DIR/<title-slug>.txt (lines joined with "\\n") and OUT_DIR/index.json with
[{title, file, bytes, sha256}]. Re-running with a complete OUT_DIR does nothing.
Standard library only.
"""
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

PACKAGE = "r-cran-janeaustenr"
RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"


def log(msg):
    print(f"fetch-austen: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def already_prepared(out_dir):
    try:
        with open(os.path.join(out_dir, "index.json")) as f:
            index = json.load(f)
        return bool(index) and all(
            sha256(os.path.join(out_dir, e["file"])) == e["sha256"] for e in index)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def download_deb(tmp):
    log(f"apt-get download {PACKAGE}")
    r = run(["apt-get", "download", PACKAGE], tmp)
    if r.returncode != 0:
        # Usually the package lists are missing (fresh container): refresh them and retry.
        update = ["apt-get", "update"] if os.geteuid() == 0 else ["sudo", "apt-get", "update"]
        log(f"download failed, running {' '.join(update)} and retrying")
        try:
            u = run(update, tmp)
        except FileNotFoundError:
            die(f"apt-get download failed and {update[0]} is not available:\n{r.stdout}")
        if u.returncode != 0:
            die(f"{' '.join(update)} failed:\n{u.stdout}")
        r = run(["apt-get", "download", PACKAGE], tmp)
        if r.returncode != 0:
            die(f"apt-get download {PACKAGE} failed even after apt-get update:\n{r.stdout}")
    debs = [f for f in os.listdir(tmp) if f.startswith(PACKAGE) and f.endswith(".deb")]
    if len(debs) != 1:
        die(f"expected one {PACKAGE}*.deb after download, found {debs}")
    return os.path.join(tmp, debs[0])


def records(data):
    """Yield the decompressed payload of every zlib record; skip what doesn't decompress."""
    data, off = memoryview(data), 0
    while off + 4 < len(data):
        (expected,) = struct.unpack_from(">I", data, off)
        d = zlib.decompressobj()
        try:
            payload = d.decompress(data[off + 4:])
        except zlib.error:
            off += 1  # not a record start: resynchronise byte by byte
            continue
        used = len(data) - off - 4 - len(d.unused_data)
        if d.eof and len(payload) == expected:
            yield payload
        off += 4 + used


def strings(payload):
    """Parse an R XDR serialization whose top-level object is a character vector."""
    if not payload.startswith(b"X\n"):
        return None
    (version,) = struct.unpack_from(">i", payload, 2)
    pos = 14  # "X\n" + version + writer R version + minimal R version
    if version == 3:
        (nelen,) = struct.unpack_from(">i", payload, pos)
        pos += 4 + nelen  # native encoding name
    flags, count = struct.unpack_from(">ii", payload, pos)
    pos += 8
    if flags & 0xFF != 16:  # STRSXP
        return None
    out = []
    for _ in range(count):
        flags, n = struct.unpack_from(">ii", payload, pos)
        pos += 8
        if flags & 0xFF != 9:  # CHARSXP
            raise ValueError(f"unexpected SEXP type {flags & 0xFF} inside a character vector")
        if n < 0:  # NA_character_
            out.append("")
            continue
        raw = payload[pos:pos + n]
        pos += n
        latin1 = flags & (1 << 14)  # LATIN1_MASK (4) shifted into the gp levels
        out.append(raw.decode("latin-1" if latin1 else "utf-8"))
    return out


def slug(title):
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def main():
    if len(sys.argv) != 2:
        die("usage: python3 scripts/fetch-austen.py OUT_DIR")
    out_dir = sys.argv[1]
    if already_prepared(out_dir):
        print("already prepared")
        return
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-austen-") as tmp:
        deb = download_deb(tmp)
        log(f"extracting {os.path.basename(deb)}")
        r = run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], tmp)
        if r.returncode != 0:
            die(f"dpkg-deb -x failed:\n{r.stdout}")
        try:
            with open(os.path.join(tmp, "x", RDB), "rb") as f:
                data = f.read()
        except OSError as e:
            die(f"cannot read {RDB} from the package: {e}")
        log(f"parsing {RDB} ({len(data)} bytes)")
        index = []
        for payload in records(data):
            try:
                lines = strings(payload)
            except (struct.error, ValueError, UnicodeDecodeError) as e:
                log(f"skipping a record that does not parse: {e}")
                continue
            if not lines or not lines[0].strip():
                continue
            title = lines[0].strip()
            name = slug(title) + ".txt"
            path = os.path.join(out_dir, name)
            # A per-process temporary name: tests run this concurrently on one folder, and
            # both write the same bytes, so either rename may land last.
            tmp_path = f"{path}.{os.getpid()}.tmp"
            with open(tmp_path, "w", encoding="utf-8", newline="\n") as f:
                f.write("\n".join(lines))
            os.replace(tmp_path, path)
            index.append({"title": title, "file": name,
                          "bytes": os.path.getsize(path), "sha256": sha256(path)})
            log(f"wrote {name} ({len(lines)} lines, {index[-1]['bytes']} bytes)")
    if len(index) != 6:
        die(f"expected 6 novels, found {len(index)}: {[e['title'] for e in index]}")
    index_tmp = os.path.join(out_dir, f"index.json.{os.getpid()}.tmp")
    with open(index_tmp, "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    os.replace(index_tmp, os.path.join(out_dir, "index.json"))
    log(f"done: {len(index)} novels in {out_dir}")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        die(str(e))

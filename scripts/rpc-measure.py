#!/usr/bin/env python3
"""Gears over llama.cpp's RPC backend on this machine (docs/rpc/): two gearbx-rpc-server
processes on 127.0.0.1 take the model's layers; gearbx-run --rpc against the same run in one
process, per gear. Bytes on the wire are the loopback interface's received bytes around each
run (/proc/net/dev; nothing else should use loopback meanwhile); per token from two lengths.

Usage: scripts/rpc-measure.py MODEL.gguf OUT.md [ROUNDS]   (after cargo build --release)
"""
import json
import os
import socket
import subprocess
import sys
import time

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release")
PROMPT = "Continue the story in the same style: It is a truth universally acknowledged, that a " \
         "single man in possession of a good fortune, must be in want of a wife."
SHORT, LONG = 32, 160


def lo_bytes():
    for line in open("/proc/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise SystemExit("no loopback interface in /proc/net/dev")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server():
    port = free_port()
    p = subprocess.Popen([f"{BIN}/gearbx-rpc-server", "-p", str(port), "-t", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("gearbx-rpc-server did not start")


def run(model, gear, n, extra):
    cmd = [f"{BIN}/gearbx-run", "-m", model, "--temp", "0", "--ignore-eos", "-n", str(n),
           "--gear", gear, "-t", "1", "--json", "-p", PROMPT] + extra
    before = lo_bytes()
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {out.stderr}")
    v = json.loads(out.stdout)
    return v, lo_bytes() - before, wall


def main():
    model, out = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    servers = [server(), server()]
    rpc = ["--rpc", ",".join(f"127.0.0.1:{p}" for _, p in servers)]
    rows = []
    try:
        for gear in ["off", "high", "mid", "low", "auto"]:
            best = {}
            for _ in range(rounds):  # interleaved, best of rounds
                for how, extra in [("local", ["-nr"]), ("rpc", rpc)]:
                    for n in (SHORT, LONG):
                        v, b, wall = run(model, gear, n, extra)
                        k = (how, n)
                        tps = v["decode_tokens_per_s"]
                        if k not in best or tps > best[k][0]["decode_tokens_per_s"]:
                            best[k] = (v, b, wall)
            (vl, _, _), (vr, br, _) = best[("local", LONG)], best[("rpc", LONG)]
            _, bs, _ = best[("rpc", SHORT)]
            per_token = (br - bs) / (LONG - SHORT)
            startup = bs - SHORT * per_token
            g = vr.get("gears") or {}
            tiers = g.get("tiers") or {}
            sent = sum(d["need"] for d in tiers.get("memory", []) if d["device"].startswith("RPC"))
            rows.append((gear, vl["decode_tokens_per_s"], vr["decode_tokens_per_s"],
                         per_token, startup, sent, g.get("shifts", 0), vr["text"] == vl["text"]))
    finally:
        for p, _ in servers:
            p.kill()
    with open(out, "w") as f:
        f.write("| gear | one process (-nr) tok/s | 2 RPC servers tok/s | ratio | loopback bytes "
                "per token | bytes before the first token | tiers on the servers | shifts "
                f"({LONG} tokens) | same text |\n|---|---|---|---|---|---|---|---|---|\n")
        for gear, tl, tr, pt, su, sent, sh, same in rows:
            f.write(f"| {gear} | {tl:.1f} | {tr:.1f} | {tr / tl:.3f} | {pt / 1e3:.1f} kB | "
                    f"{su / 1e6:.1f} MB | {sent / 1e6:.1f} MB | {sh} | {'yes' if same else 'no'} |\n")
    print(open(out).read())


if __name__ == "__main__":
    main()

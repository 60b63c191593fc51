#!/usr/bin/env python3
"""Reference xxHash values for armwatch's assignment re-derivation, from the Python `xxhash`
package (bindings to the reference C implementation, https://github.com/Cyan4973/xxHash).

    python3 scripts/reference/xxhash_vectors.py > tests/fixtures/xxhash_vectors.json

`--check FILE` exits non-zero when FILE differs from what this script computes now.
"""
import json
import sys

import xxhash

KEYS = [
    "",
    "a",
    "prompt-variant:u1",
    "prompt-variant:u42",
    "ranker-v3:u0",
    "ranker-v3:u19999",
    "ranker-v3:u7:pro",
    "workspace-collab:ws-17",
    "salt:ünïcödé-user-✓",
    "x" * 16,
    "x" * 17,
    "y" * 128,
    "y" * 129,
    "z" * 240,
    "z" * 241,
    "w" * 1000,
]
SEEDS = [0, 1, 42, 2**63 + 11]


def vectors():
    out = {"source": "python xxhash %s (xxHash C reference)" % xxhash.VERSION, "hashes": [], "assignments": []}
    for key in KEYS:
        b = key.encode("utf-8")
        for seed in SEEDS:
            out["hashes"].append({
                "key": key,
                "seed": seed,
                "xxh3_64": xxhash.xxh3_64_intdigest(b, seed),
                "xxh64": xxhash.xxh64_intdigest(b, seed),
            })
    # the declared rule of the README: bucket = xxh3_64("{salt}:{unit}") % 10000,
    # control [0, 5000), treatment [5000, 10000)
    for u in range(40):
        key = "ranker-v3:u%d" % u
        bucket = xxhash.xxh3_64_intdigest(key.encode("utf-8"), 0) % 10000
        out["assignments"].append({"salt": "ranker-v3", "unit": "u%d" % u, "bucket": bucket,
                                   "arm": "control" if bucket < 5000 else "treatment"})
    return out


def main():
    text = json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        with open(sys.argv[2], encoding="utf-8") as f:
            pinned = json.load(f)
        now = json.loads(text)
        pinned.pop("source", None)
        now.pop("source", None)
        if pinned != now:
            print("xxhash vectors differ from %s" % sys.argv[2], file=sys.stderr)
            sys.exit(1)
        print("xxhash vectors match %s" % sys.argv[2])
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

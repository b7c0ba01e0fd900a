#!/usr/bin/env python3
"""Heap bytes live at the peak of two DHAT profiles (valgrind --tool=dhat) of the same
server holding N and M idle connections, the difference per extra connection, by owner and
by allocation site: `dhat-sites.py DHAT_N.json N DHAT_M.json M [TOP]`.

The owner of an allocation is the first frame of its stack (innermost first) that names a
known library; the site is the first frame that is not an allocator. Used by
`DHAT=1 benches/tls-idle-mem.sh`, where the peak is reached with every connection held idle:
the difference leaves out what the process holds whatever the connections (CA bundles,
runtimes, tables).
"""
import json
import sys
from collections import defaultdict

OWNERS = [
    ("OpenSSL", ("SSL_", "ssl3_", "ssl_", "tls_", "OPENSSL_", "CRYPTO_", "EVP_", "BN_",
                 "ossl_", "openssl", "RSA_", "EC_", "BUF_MEM", "ASN1_", "X509", "dtls",
                 "statem", "read_state_machine", "state_machine", "BIO_")),
    ("h2 crate", ("h2::",)),
    ("Pingora", ("pingora_",)),
    ("tokio", ("tokio::",)),
    ("Tollgate", ("tollgate::",)),
]
# Frames that allocate on behalf of their caller: skipped when naming the owner.
GENERIC = ("malloc", "calloc", "realloc", "memalign", "posix_memalign", "alloc::", "core::",
           "bytes::", "mi_", "_mi_", "hashbrown::", "std::", "__rust", "<alloc::", "<core::",
           "<bytes::", "<hashbrown::", "<std::", "???", "0x", "CRYPTO_malloc", "CRYPTO_zalloc",
           "CRYPTO_realloc", "CRYPTO_clear_realloc", "alloc ", "alloc_zeroed ")


def frame_name(f):
    # "0x4A2B1C: SSL_new (ssl_lib.c:700)" -> "SSL_new (ssl_lib.c:700)"
    return f.split(": ", 1)[1] if ": " in f else f


def tally(path):
    """(owners, sites, total): bytes at the peak by owner and by (owner, site)."""
    d = json.load(open(path))
    ftbl = d["ftbl"]
    owners = defaultdict(int)
    sites = defaultdict(int)
    total = 0
    for pp in d["pps"]:
        gb = pp.get("gb", 0)
        if not gb:
            continue
        total += gb
        frames = [frame_name(ftbl[i]) for i in pp["fs"]]
        named = [f for f in frames
                 if not f.startswith(GENERIC) and f.split(" (")[0] != "alloc"]
        site = named[0] if named else (frames[0] if frames else "?")
        owner = "other"
        for f in named:
            hit = next((o for o, pre in OWNERS if f.startswith(pre)), None)
            if hit:
                owner = hit
                break
        owners[owner] += gb
        sites[(owner, site.split(" (")[0][:110])] += gb
    return owners, sites, total


def main():
    path_n, n, path_m, m = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 15
    o1, s1, t1 = tally(path_n)
    o2, s2, t2 = tally(path_m)
    per = (m - n) * 1024
    print(f"heap live at the peak: {t1 / 1024:.0f} KB with {n} connections, {t2 / 1024:.0f} KB "
          f"with {m}: {(t2 - t1) / per:.1f} KB per idle connection")
    for o in sorted(set(o1) | set(o2), key=lambda k: -(o2.get(k, 0) - o1.get(k, 0))):
        print(f"  {(o2.get(o, 0) - o1.get(o, 0)) / per:7.2f} KB  {o}")
    print(f"top {top} sites (KB per idle connection):")
    diff = {k: s2.get(k, 0) - s1.get(k, 0) for k in set(s1) | set(s2)}
    for (o, s), b in sorted(diff.items(), key=lambda x: -x[1])[:top]:
        print(f"  {b / per:7.2f}  {o:9} {s}")


if __name__ == "__main__":
    main()

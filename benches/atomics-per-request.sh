#!/usr/bin/env bash
# Shared-memory writes per request: atomic read-modify-writes (x86 `lock`-prefixed
# instructions, and `xchg` with a memory operand, which locks implicitly) executed per proxied
# request, in total and by function, for Tollgate's plain route and full chain. Every
# uncontended lock, refcount change, atomic counter or CAS is one of these; on many cores
# the ones on data shared between worker threads are the ones that bounce cache lines.
#
# Runs ../shared/perf/icount.sh unchanged (N and 3N requests after WARM warm-up ones, one
# worker, the bench JWT on every request), with a `valgrind` first on PATH that adds
# --dump-instr=yes (per-instruction counts) --compress-pos=no. Then, for each proxy: every
# lock/xchg-with-memory instruction of each object that ran (`objdump -d` of the binary that
# ran, and of libc and the like), its execution count in the 3N run less the N run, over 2N,
# so start-up and shutdown cancel out. Prints the total, a table by function (callgrind's
# names) and the top sites by address with their inline chain (addr2line -i), to read
# against the source and tell shared (metrics, limiter, pools, Arc<Gateway>...) from
# per-request or thread-local. Counts repeat run to run like icount's instruction counts.
#
#   benches/atomics-per-request.sh                       # tgplain tggw, N=2000 WARM=200
#   PROXIES=tggw N=5000 TOP=40 benches/atomics-per-request.sh
#   benches/atomics-per-request.sh report RUN_DIR        # tables again from an earlier run (same
#                                                        # binary: addresses are looked up in it)
#
# Not on a binary laid out by BOLT (BOLT=1 scripts/build-dist.sh): the sites are looked up
# by address in the binary's disassembly, and most of them moved; use target/bolt/dist/tollgate.
# Run it under the cargo lock, after `cargo build --profile dist`:
#   flock /tmp/tollgate-cargo.lock benches/atomics-per-request.sh
# Needs what icount.sh needs, objdump and addr2line (binutils), python3. About a minute a
# proxy at N=2000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
bin=${TOLLGATE_BIN:-$root/target/dist/tollgate}
export N=${N:-2000} WARM=${WARM:-200}
export PROXIES=${PROXIES:-"tgplain tggw"}
TOP=${TOP:-25}

report() { # run_dir
  python3 - "$1" "$N" "$TOP" "$bin" <<'PY'
import collections, glob, os, re, subprocess, sys

run_dir, n, top, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
proxies = os.environ["PROXIES"].split()
HASH = re.compile(r"::h[0-9a-f]{16}\b")


def parse(d):
    """Self Ir by (object, instruction address) over every callgrind file in d, and the
    function callgrind names for each site."""
    cost, fname = collections.Counter(), {}
    for f in glob.glob(d + "/cg.*"):
        ob = fn = None
        names = {"ob": {}, "fn": {}}
        skip = False
        for line in open(f, errors="replace"):
            if skip:  # the inclusive cost of a call, on the line after calls=
                skip = False
                continue
            c = line[:1]
            if c == "0":
                a, _, rest = line.partition(" ")
                ir = rest.split()
                if ob is not None and len(ir) >= 2:
                    k = (ob, int(a, 16))
                    cost[k] += int(ir[1])
                    fname.setdefault(k, fn)
                continue
            if line.startswith("calls="):
                skip = True
                continue
            m = re.match(r"(c?)(ob|fn)=(?:\((\d+)\))? ?(.*)$", line.rstrip("\n"))
            if not m:
                continue
            called, kind, ident, v = m.groups()
            if ident is not None:  # compressed names: "(id) name" defines, "(id)" refers
                if v:
                    names[kind][ident] = v  # cob=/cfn= share ob=/fn='s ids
                v = names[kind].get(ident, v)
            if called:
                continue
            if kind == "ob":
                ob = v
            else:
                fn = HASH.sub("", v)
    return cost, fname


_atomic_sites = {}


def atomic_sites(obj):
    """Addresses of lock-prefixed and xchg-with-memory instructions in obj -> disassembly."""
    if obj not in _atomic_sites:
        sites = {}
        if os.path.isfile(obj):
            dis = subprocess.Popen(["objdump", "-d", "--no-show-raw-insn", obj],
                                   stdout=subprocess.PIPE, text=True)
            for line in dis.stdout:
                if "lock" not in line and "xchg" not in line:
                    continue
                m = re.match(r"\s*([0-9a-f]+):\s+(.*)$", line)
                if not m:
                    continue
                ins = m.group(2).split("#")[0].strip()
                if re.match(r"lock\b", ins) or (re.match(r"xchg[bwlq]?\s", ins) and "(" in ins):
                    sites[int(m.group(1), 16)] = ins
            dis.wait()
        _atomic_sites[obj] = sites
    return _atomic_sites[obj]


def inline_chain(obj, addrs):
    """addr -> 'innermost <- ... <- outermost' file:line chain, from addr2line -i."""
    if not addrs:
        return {}
    out = subprocess.run(["addr2line", "-i", "-f", "-C", "-a", "-e", obj] + ["%x" % a for a in addrs],
                         capture_output=True, text=True).stdout.splitlines()
    res, cur, frames, i = {}, None, [], 0
    while i < len(out):
        if out[i].startswith("0x"):
            if cur is not None:
                res[cur] = frames
            cur, frames = int(out[i], 16), []
            i += 1
            continue
        func = HASH.sub("", out[i])
        loc = out[i + 1] if i + 1 < len(out) else "?"
        loc = re.sub(r".*/(registry/src/[^/]+/|rustc/[0-9a-f]+/library/|work/main/)", "", loc)
        frames.append((func, loc))
        i += 2
    if cur is not None:
        res[cur] = frames
    return res


for p in proxies:
    a, b = f"{run_dir}/cg.{p}.{n}", f"{run_dir}/cg.{p}.{3 * n}"
    if not os.path.isdir(b):
        continue
    c1, names1 = parse(a)
    c3, names3 = parse(b)
    per_site, ir_total = {}, 0
    for k in set(c1) | set(c3):
        d = c3[k] - c1[k]
        ir_total += d
        if d and k[1] in atomic_sites(k[0]):
            per_site[k] = d / (2 * n)
    total = sum(per_site.values())
    print(f"== {p}: {total:.2f} atomic RMWs per request "
          f"({ir_total / (2 * n):.0f} instructions per request; N={n}, 3N run less N run, over 2N)")
    by_fn = collections.Counter()
    for k, v in per_site.items():
        by_fn[(os.path.basename(k[0]), names3.get(k) or names1.get(k))] += v
    print(f"{'per req':>8}  {'sites':>5}  function (object)")
    nsites = collections.Counter((os.path.basename(k[0]), names3.get(k) or names1.get(k)) for k in per_site)
    for (ob, fn), v in by_fn.most_common():
        if v < 0.005:
            continue
        print(f"{v:8.2f}  {nsites[(ob, fn)]:5d}  {fn}" + ("" if ob == os.path.basename(binary) else f"  ({ob})"))
    print(f"-- top {top} sites: count/request, address, instruction, inline chain (innermost first)")
    ranked = sorted(per_site.items(), key=lambda kv: -kv[1])[:top]
    chains = {}
    for obj in {k[0] for k, _ in ranked}:
        chains[obj] = inline_chain(obj, [k[1] for k, _ in ranked if k[0] == obj])
    for (obj, addr), v in ranked:
        print(f"{v:8.2f}  {addr:#x}  {atomic_sites(obj)[addr]}" + ("" if os.path.basename(obj) == os.path.basename(binary) else f"  ({os.path.basename(obj)})"))
        for func, loc in chains[obj].get(addr, []):
            print(f"{'':12}{loc}  {func[:140]}")
    print()
PY
}

if [ "${1:-}" = report ]; then
  export RUN_DIR=$2
  # shellcheck disable=SC1091
  . "$RUN_DIR/params" # N and PROXIES of that run
  export PROXIES
  [ "$(sha256sum "$bin" | cut -c1-16)" = "$sha" ] ||
    echo "# warning: $bin is not the binary that ran ($sha): addresses will not match" >&2
  report "$RUN_DIR"
  exit
fi

export RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/atomics.XXXXXX)}
shim="$RUN_DIR/shim"
mkdir -p "$shim"
real=$(command -v valgrind)
printf '#!/bin/sh\nexec %s --dump-instr=yes --compress-pos=no "$@"\n' "$real" >"$shim/valgrind"
chmod 755 "$shim/valgrind"
export PROXY_CMD_tgplain="env TOLLGATE_BIN=$bin $root/benches/run-tollgate.sh plain"
export PROXY_CMD_tggw="env TOLLGATE_BIN=$bin $root/benches/run-tollgate.sh gateway"
export REQ_HEADER="Authorization: Bearer $(cat "$perf/peers/bench.jwt")"
sha=$(sha256sum "$bin" | cut -c1-16)
printf 'N=%s\nPROXIES="%s"\nsha=%s\n' "$N" "$PROXIES" "$sha" >"$RUN_DIR/params"
PATH="$shim:$PATH" "$perf/icount.sh"
echo "# binary: $bin ($sha)"
echo
report "$RUN_DIR"

"""New-chunk bytes between nights of COPY output (see scripts/bench-dedup-order).

Chunker: pyfastcdc (FastCDC 2020, normalized chunking level 1, a port of
fastcdc-rs v2020: the same algorithm as pgproof's StreamCDC with Level1, min =
avg/4, max = avg*4; pgproof keys its gear table with a seed, here seed 0).
Cross-check: the `fastcdc` PyPI package (ronomon-style FastCDC, an older variant).
Chunk identity: sha256 of the chunk bytes.
"""
import hashlib, os, sys
from collections import defaultdict
import pyfastcdc
import fastcdc as fastcdc_pkg

out = sys.argv[1]
NIGHTS = sorted(int(f.rsplit(".", 1)[1]) for f in os.listdir(out) if f.startswith("events.phys."))
SIZES = [(1 << 20, "1 MiB"), (64 << 10, "64 KiB")]
MiB = 1048576.0


def chunks_pyfastcdc(path, avg):
    cdc = pyfastcdc.FastCDC(avg, min_size=avg // 4, max_size=avg * 4, normalized_chunking=1)
    return [(c.offset, c.length, hashlib.sha256(c.data).digest()) for c in cdc.cut_file(path)]


def chunks_pkg(path, avg):
    return [(c.offset, c.length, c.hash)
            for c in fastcdc_pkg.fastcdc(path, avg // 4, avg, avg * 4, fat=False, hf=hashlib.sha256)]


def new_bytes(prev, cur):
    seen = {h for _, _, h in prev}
    new = [(o, l) for o, l, h in cur if h not in seen]
    return sum(l for _, l in new), new


def regions(new, size):
    """Merged new-chunk ranges as % of the file."""
    rs = []
    for o, l in sorted(new):
        if rs and o <= rs[-1][1]:
            rs[-1][1] = max(rs[-1][1], o + l)
        else:
            rs.append([o, o + l])
    return " ".join("%.1f-%.1f" % (100 * a / size, 100 * b / size) for a, b in rs[:8]) + (" ..." if len(rs) > 8 else "")


def lines(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")[:-1]


rows = []
for t in ("events", "customers"):
    # row-level change (order-independent)
    L = {n: lines(f"{out}/{t}.pk.{n}") for n in NIGHTS}
    S = {n: set(L[n]) for n in NIGHTS}
    for order in ("phys", "pk"):
        paths = {n: f"{out}/{t}.{order}.{n}" for n in NIGHTS}
        for avg, label in SIZES:
            ch = {n: chunks_pyfastcdc(paths[n], avg) for n in NIGHTS}
            chk = {n: chunks_pkg(paths[n], avg) for n in NIGHTS}
            for n in NIGHTS[1:]:
                size = os.path.getsize(paths[n])
                nb, new = new_bytes(ch[n - 1], ch[n])
                nb2, _ = new_bytes(chk[n - 1], chk[n])
                changed = [r for r in L[n] if r not in S[n - 1]]
                gone = len(S[n - 1] - S[n])
                rows.append(dict(t=t, order=order, chunk=label, night=f"{n} vs {n-1}", size=size,
                                 nchunks=len(ch[n]), nnew=len(new), nb=nb, nb2=nb2,
                                 rows=len(L[n]), rchanged=len(changed), rgone=gone,
                                 rbytes=sum(len(r) + 1 for r in changed),
                                 regions=regions(new, size)))

hdr = ("table", "order", "chunk", "nights", "file MiB", "new MiB", "new %", "new chunks",
       "(fastcdc-pkg new %)", "rows new/changed", "rows removed", "changed-row bytes %")
print(" | ".join(hdr))
for r in rows:
    print(" | ".join([
        r["t"], r["order"], r["chunk"], r["night"], "%.1f" % (r["size"] / MiB), "%.2f" % (r["nb"] / MiB),
        "%.1f%%" % (100 * r["nb"] / r["size"]), "%d/%d" % (r["nnew"], r["nchunks"]),
        "%.1f%%" % (100 * r["nb2"] / r["size"]),
        "%d (%.2f%%)" % (r["rchanged"], 100 * r["rchanged"] / r["rows"]),
        "%d" % r["rgone"], "%.2f%%" % (100 * r["rbytes"] / r["size"])]))
print()
print("where the new 1 MiB-chunk bytes sit in the file (% of file offset):")
for r in rows:
    if r["chunk"] == "1 MiB":
        print(f"  {r['t']:9} {r['order']:4} {r['night']}: {r['regions']}")

# ---- placement of new / updated rows (ctid blocks) ----
relpages = {}
with open(f"{out}/relpages") as f:
    for line in f:
        t, n, _, p = line.split()
        relpages[t, int(n)] = int(p)
fsm = {}
with open(f"{out}/fsm") as f:
    for line in f:
        t, n, _, cnt, avail, first = line.split()
        fsm[t, int(n)] = (int(cnt), int(avail), int(first))


def blocks(t, n):
    d = {}
    with open(f"{out}/{t}.blk.{n}") as f:
        for line in f:
            i, b = line.split()
            d[int(i)] = int(b)
    return d


print()
print("placement (heap blocks):")
for t in ("events", "customers"):
    B = {n: blocks(t, n) for n in NIGHTS}
    L = {n: {int(r.split(b"\t", 1)[0]): r for r in lines(f"{out}/{t}.pk.{n}")} for n in NIGHTS}
    for n in NIGHTS[1:]:
        prev_pages = relpages[t, n - 1]
        new_ids = [i for i in B[n] if i not in B[n - 1]]
        upd_ids = [i for i in B[n] if i in B[n - 1] and L[n][i] != L[n - 1][i]]
        gone_ids = [i for i in B[n - 1] if i not in B[n]]

        def desc(ids, what):
            if not ids:
                return f"    {what}: none"
            bl = sorted(B[n][i] for i in ids)
            reused = sum(1 for b in bl if b < prev_pages)
            same = sum(1 for i in ids if i in B[n - 1] and B[n][i] == B[n - 1][i])
            s = (f"    {what}: {len(ids)} rows, blocks {bl[0]}..{bl[-1]} (median {bl[len(bl)//2]}); "
                 f"{reused} ({100*reused/len(ids):.0f}%) in blocks that existed last night (< {prev_pages})")
            if what.startswith("updated"):
                s += f", {same} ({100*same/len(ids):.0f}%) still in their own block (HOT/in-page)"
            return s

        gb = sorted(B[n - 1][i] for i in gone_ids)
        fc, fa, ff = fsm[t, n - 1]
        print(f"  {t} night {n}: relpages {prev_pages} -> {relpages[t, n]}; before the churn the FSM offered "
              f"{fc} blocks with >= 1 KiB free ({fa / MiB:.2f} MiB, first block {ff})"
              + (f"; deleted rows had been in blocks {gb[0]}..{gb[-1]}" if gb else ""))
        print(desc(new_ids, "new ids"))
        print(desc(upd_ids, "updated ids"))

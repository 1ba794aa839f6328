"""Fingerprints of pyrgd's CPU outputs, to show that a refactor changed no bit.

For the quickstart and the benchmark problems B1, B2, B3 it runs ``pyrgd.train`` for 3 steps (every GD method the
problem can take) and ``pyrgd.certify.certify`` on the quickstart, and records a SHA-256 of every output: the weights after the 3
steps, the loss history, the gradient norms, the contraction factors, the certificates (their numbers: times and
prose are left out).

    python bench/bit_identity.py --write bench/results/bit_identity.json   # before a change
    python bench/bit_identity.py --check bench/results/bit_identity.json   # after it: exit 1 on any difference

Run it on the same machine and instruction set for both (the AVX2 and AVX-512 kernels agree bit for bit, the
baseline ones may not; ``PYRGD_CPU_ISA`` chooses).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys

import numpy as np


def _digest(value) -> str:
    """SHA-256 of a value's exact bits: arrays by their bytes (with dtype and shape), floats by their repr."""
    h = hashlib.sha256()
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            h.update(_digest(v).encode())
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(k.encode())
            h.update(_digest(value[k]).encode())
    elif isinstance(value, float):
        h.update(("nan" if math.isnan(value) else float(value).hex()).encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _run_fingerprint(result) -> dict:
    out = {f"W{l}": _digest(w) for l, w in enumerate(result.net.weights, start=1)}
    for key, col in result.history.items():
        if key != "time":
            out[f"history.{key}"] = _digest([float(v) for v in col])
    for key, col in result.certificates.items():
        if key != "time":
            out[f"cert.{key}"] = _digest([float(v) if isinstance(v, (int, float)) else v for v in col])
    out["lr"] = _digest(float(result.lr))
    out["status"] = result.status
    return out


def _numbers(d):
    """The numbers of a nested report (strings, the prose of notes and verdicts, and times left out)."""
    if isinstance(d, dict):
        return {k: _numbers(v) for k, v in d.items() if "time" not in k and not isinstance(v, str)}
    if isinstance(d, list):
        return [_numbers(v) for v in d if not isinstance(v, str)]
    return d


def cases():
    """(name, thunk) pairs; each thunk returns a dict of fingerprints."""
    import pyrgd
    from pyrgd.bench.problems import make_data, select_problems
    from pyrgd.config import PRESETS, build

    def quickstart(backend, method):
        def run():
            net, X, Y, kw = build(PRESETS["quickstart"])
            kw.update(steps=3, track_every=1, backend=backend, method=method)
            return _run_fingerprint(pyrgd.train(net, X, Y, progress=False, **kw))
        return run

    def certify_quickstart():
        net, X, Y, _ = build(PRESETS["quickstart"])
        from pyrgd.certify import certify
        return {"certify": _digest(_numbers(certify(net, X, Y, lr="auto", backend="cpu")))}

    def bench_problem(name, method, track_every):
        def run():
            (p,) = select_problems(name)
            data = make_data(p)
            net = pyrgd.PyramidalNet(d=p.d, widths=list(p.widths), activation=p.activation, dtype="float32",
                                     seed=0)
            net.weights = [w.copy() for w in data.W]
            res = pyrgd.train(net, data.X, data.Y, lr=p.lr, steps=3, backend="cpu", track_every=track_every,
                              progress=False, method=method)
            return _run_fingerprint(res)
        return run

    yield "quickstart/cpu/auto", quickstart("cpu", "auto")
    yield "quickstart/cpu/neurons", quickstart("cpu", "neurons")
    yield "quickstart/reference", quickstart("reference", "auto")
    yield "quickstart/certify", certify_quickstart
    for name in ("B1", "B2"):
        for method in ("rows", "neurons"):
            yield f"{name}/{method}", bench_problem(name, method, 3)
    for method in ("rows", "neurons"):
        yield f"B3/{method}", bench_problem("B3", method, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="JSON", help="write the fingerprints here")
    g.add_argument("--check", metavar="JSON", help="compare with the fingerprints written here")
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    args = ap.parse_args(argv)
    from pyrgd.backends import cpu

    only = set(args.only.split(",")) if args.only else None
    got = {"isa": cpu.get_isa(), "cases": {}}
    for name, run in cases():
        if only and name not in only:
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        got["cases"][name] = run()
    if args.write:
        with open(args.write, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {len(got['cases'])} cases to {args.write}")
        return 0
    with open(args.check) as f:
        want = json.load(f)
    bad = []
    for name, fp in got["cases"].items():
        ref = want["cases"].get(name)
        if ref is None:
            bad.append(f"{name}: not in {args.check}")
            continue
        bad += [f"{name}: {k} differs" for k in sorted(set(fp) | set(ref)) if fp.get(k) != ref.get(k)]
    if got["isa"] != want.get("isa"):
        print(f"note: kernels {got['isa']} here, {want.get('isa')} in {args.check}", file=sys.stderr)
    for line in bad:
        print(line)
    n = sum(len(v) for v in got["cases"].values())
    print(f"{len(got['cases'])} cases, {n} outputs: " + ("all bit-identical" if not bad else f"{len(bad)} differ"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

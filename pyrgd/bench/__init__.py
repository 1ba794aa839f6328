"""``pyrgd bench``: one full GD step of reference problems, timed for pyrgd's fused step and for baselines.

    pyrgd bench [--backend cpu|cuda|reference] [--problems B1,B2,...] [--tiny] [--repeats N] [--json]
                [--out FILE.json] [--plot FILE.png] [--no-memory] [--strict]

Every candidate runs on the same data and initial weights and is checked against the fused step (relative errors of
the updated weights and of the update); the report gives seconds per step (median, IQR), useful GFLOP/s
(THEORY.md section 2), % of the SGEMM rate (DGEMM for the float64 problems) measured in the same run, peak memory,
the fused speedup over each baseline, the candidates ranked per problem with the fused step's share of the FMA peak,
and the performance targets as PASS/FAIL lines (the "best peer" ones against the faster of torch.compile and JAX
jit, whose compilation is reported apart from the step time). Benchmarks are not tests: nothing here is a unit-test
threshold. Progress goes to stderr; the table (or, with --json, only the JSON) to stdout.

Exit codes: 0 the run finished (targets may FAIL: they are measurements); 1 a candidate computed a different step
than the fused one, or the fused step failed, or a train problem's pyrgd.train run failed, or (--strict) a target
failed; 2 bad arguments.

The train problems (group L: pyrgd.train with its defaults at large N, each in a fresh process) are not in the
default selection, since L2 alone takes minutes on two cores: ``--problems L`` runs them.

Modules: problems (sizes, flop and byte counts, data), candidates (fused / unfused / chunked / torch steps, and the
compiled peers torch_compile and jax_jit, skipped with a note where torch or jax is absent: pip install "pyrgd[bench]"),
memory (peak RSS in a fresh process; GPU allocator peaks), runner (checks, timing, SGEMM, machine facts),
train_runs (the train problems), report (targets, table, JSON).
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser", "add_bench_parser", "run_bench"]

_DESCRIPTION = ("Time one full-batch GD step of reference problems: pyrgd's fused step against unfused and "
                "chunked array-library steps, PyTorch autograd, torch.compile and JAX jit, on the same data, with "
                "the SGEMM (DGEMM) rate and the FMA peak of this machine measured in the same run.")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonnegative_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the bench options to ``p``."""
    p.add_argument("--backend", choices=("auto", "cpu", "reference", "cuda"), default="auto",
                   help="the fused candidate's backend; cuda runs the GPU problems (G1, G2) on CuPy/torch, the "
                        "others the CPU problems. auto: cpu, or reference where the C++ extension is missing")
    p.add_argument("--problems", metavar="LIST", default=None,
                   help="comma-separated problems or groups: B1,B2,D,B3,B4,T (CPU; the default; D: B1d and B2d, "
                        "B1 and B2 in float64), L (pyrgd.train with its defaults at large N: L1, L2, B1_track; "
                        "minutes, not in the default) or G1,G2 (GPU)")
    p.add_argument("--tiny", action="store_true", help="small sizes (seconds; for CI)")
    p.add_argument("--repeats", type=_positive_int, default=None, metavar="N",
                   help="timed steps per candidate (default 7, 3 with --tiny; B3 takes one, G2 at most 3); on a "
                        "train problem (group L), the bare engine steps timed after its run (L2: one)")
    p.add_argument("--warmup", type=_nonnegative_int, default=1, metavar="N",
                   help="warm-up steps after the check step (default 1)")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--out", metavar="FILE.json", default=None,
                   help="also write the JSON result to this file (rewritten after every problem, with "
                        "\"complete\": false until the run ends)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw the run: seconds per step of every candidate against the targets and the "
                        "roofline floor, and the B4 time per neuron (python -m pyrgd.bench.plot redraws a JSON)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurements (CPU: subprocesses; the train problems of group L run in "
                        "one anyway and are measured)")
    p.add_argument("--block", type=_positive_int, default=None, metavar="NEURONS",
                   help="neurons per block of the chunked baseline (default 512 on the CPU, N x block <= 1 GiB on "
                        "the GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and weights (default 0)")
    p.add_argument("--strict", action="store_true", help="exit code 1 when a target FAILs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def build_parser(prog: str = "pyrgd bench") -> argparse.ArgumentParser:
    return configure_parser(argparse.ArgumentParser(prog=prog, description=_DESCRIPTION))


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse subparsers object (``pyrgd.cli``); dispatch to :func:`run_bench`."""
    p = subparsers.add_parser("bench", help="benchmark one GD step against baselines (speed, memory, targets)",
                              description=_DESCRIPTION)
    configure_parser(p)
    p.set_defaults(func=run_bench)
    return p


def options_from_args(args):
    """(Options, problems) from parsed arguments; PyrgdError on a bad selection or a missing backend."""
    from .problems import select_problems
    from .runner import Options

    device = "cuda" if args.backend == "cuda" else "cpu"
    opts = Options(device=device, backend=args.backend, tiny=args.tiny, repeats=args.repeats, warmup=args.warmup,
                   memory=not args.no_memory, seed=args.seed, block=args.block,
                   progress=not args.no_progress)
    if device == "cuda":
        from ..ops import get_backend

        get_backend("cuda")  # BackendUnavailable names what to install
    return opts, select_problems(args.problems, device, args.tiny)


def run_bench(args) -> int:
    """Run the benchmark for parsed arguments; print the table (or JSON); returns the exit code."""
    from ..errors import PyrgdError
    from .report import format_report, to_json
    from .runner import run

    opts, problems = options_from_args(args)

    def write(res):
        tmp = f"{args.out}.partial"
        with open(tmp, "w") as f:
            f.write(to_json(res) + "\n")
        os.replace(tmp, args.out)

    created = False
    if args.out:  # fail now, not after the run, when the file cannot be written
        created = not os.path.exists(args.out)
        try:
            with open(args.out, "a"):
                pass
        except OSError as e:
            raise PyrgdError(f"--out: cannot write {args.out}: {e.strerror or e}") from None
    try:
        result = run(problems, opts, on_problem=write if args.out else None)
    except BaseException:
        if created and os.path.exists(args.out) and os.path.getsize(args.out) == 0:
            os.remove(args.out)  # nothing was measured: leave no empty file behind
        raise
    text = to_json(result)
    if args.out:
        write(result)
    if args.plot:
        from .plot import plot_result

        try:
            plot_result(result, args.plot)
        except (OSError, ValueError) as e:  # the measurements are kept (printed, --out) even if the plot fails
            print(f"pyrgd bench: warning: --plot {args.plot}: {e}", file=sys.stderr)
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        print(format_report(result))
        if args.out:
            print(f"\nJSON written to {args.out}")
        if args.plot and os.path.exists(args.plot):
            print(f"figure written to {args.plot}")
    sys.stdout.flush()
    bad = [(p["name"], n) for p in result["problems"] for n, r in p["candidates"].items()
           if r.get("status") == "mismatch" or (n == "fused" and r.get("status") == "failed")]
    if bad:
        print("pyrgd bench: error: " + ", ".join(f"{p} {n}" for p, n in bad) + " did not compute the fused step",
              file=sys.stderr)
        return 1
    failed = [p["name"] for p in result["problems"] if p["candidates"].get("train", {}).get("status") == "failed"]
    if failed:
        print("pyrgd bench: error: pyrgd.train failed on " + ", ".join(failed) + ": "
              + "; ".join(p["candidates"]["train"].get("note", "") for p in result["problems"] if p["name"] in failed),
              file=sys.stderr)
        return 1
    if args.strict and any(t["status"] == "FAIL" for t in result["targets"]):
        return 1
    return 0


def main(argv=None) -> int:
    """``pyrgd bench`` as a function: main(["--tiny", "--json"]) -> exit code."""
    from ..errors import BackendUnavailable, PyrgdError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (argparse printed why)
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        return run_bench(args)
    except (PyrgdError, BackendUnavailable) as e:
        print(f"pyrgd bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

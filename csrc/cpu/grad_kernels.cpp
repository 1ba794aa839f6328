// pyrgd CPU backend: the loss and every gradient of the whole network in one pass over panels of rows (declared in
// pyrgd/grad.h with network_grad's workspace size, grad_panel_rows and sgd_update).
//
// The wide layer's step of wide_kernels.cpp streams over blocks of neurons: it needs G = dPhi/dZ_2 of every row
// before it starts, so Z_1 = X W_1 is computed twice per GD step (once for H = Z_2, once for the gradient). Here the
// rows are the outer loop instead: for a panel of R rows, (A) Z_1 of all n1 neurons, S = a1 sigma(Z_1),
// D = a1 sigma'(Z_1) (kept for the panel: R x n1 values each, never N x n1) and Z_2 = S W_2; (T) the tail on those
// rows, which gives the panel's G; (B) P = G W_2^T, D = P (.) D, and dW_2 += S^T G, dW_1 += X^T D. Each product is
// done once: 2 N n1 (d + n2) multiply-adds per step instead of 3, and sigma, sigma' are evaluated once.
// The price is the gradients of W_1 and W_2 held until the last panel (the caller's arrays), W_2^T, and W_1 and its
// gradient in contiguous blocks of kBlock neurons (copied in and out once per call).
// ReLU keeps S alone: (B) reads relu'(z) off S = a1 relu(z) (nonzero exactly where z > 0, unless a1 z underflows),
// with the bits of the general path.
//
// Kept and recomputed neurons: a panel holds S and D of R rows of the kept neurons, at most kGradPanelBytes; where a
// panel of kGradPanelRowsMin rows of all n1 would not fit (pyrgd.gdstep.rows_kept), only the first `kept` neurons
// (whole blocks) go through the panels; the others are recomputed as in `step`: before the panels, a pass over
// tiles of kRecRows rows gives their part of Z_2 (HR, all N rows); after them, a pass over their blocks (each by one
// thread, over tiles of rows) computes Z_1 again with the G of all rows (kept from the panels) and accumulates their
// gradients. kept = n1 is the plain pass above.
//
// Prefetch (what keeps the panels at the in-cache rate once the working set leaves the cache): the products that
// write a panel block or accumulate into a gradient block ask for those rows one register tile ahead (tile_ops.h,
// kPrefetchC / kPrefetchM), and each product of a panel is run in kStages parts of whole register tiles with a slice
// of the NEXT product's operands prefetched before each part (`staged`): W2[T, :] while Z is computed, the next
// block's W_1 while Z_2 is, S and dW2[T, :] while P is, dW1[:, T] while dW2 is, the next block's W_2^T and D while
// dW1 is. Without it, a panel whose blocks come from memory waits on each block's first misses; with it, those
// misses overlap the previous product (the measured effect is in the benchmark docs, bench/README.md). Splitting a
// product by its rows changes no bit.
//
// Threads: in (A) and (B) over lanes of consecutive blocks of kBlock neurons. In (A) each thread starts on its own
// contiguous range of lanes, front to back, and when done takes the lanes the other threads have not started, from
// the back of their ranges; in (B) it runs the lanes it did in (A) backwards (the freshest S and D first, still in
// its cache), then takes any lane not yet started. A lane is claimed by one atomic compare-and-swap of its panel
// number, so on a quiet machine each thread keeps its own range (as with a static split), and on a shared one
// (another process on a core, a laptop's slow core) a thread slowed down leaves its lanes to the others instead
// of holding up the whole team at the barrier. The tail, the recomputed neurons' passes and the small loops take
// their items dynamically too. None of this changes a bit: every lane's work and every sum is the same whoever
// runs it (see Determinism).
// Determinism: Z_2 of a panel is the recomputed neurons' part (per row tile, sums over groups of kSuperBlocks blocks
// added in order), then the sum over lanes, in lane order, of each lane's sum over its blocks in order (one FMA chain
// per block); the lanes and the panel rows are fixed by the shapes and `kept` alone; each gradient element is a sum
// over panels (or row tiles), in order, of one FMA chain over their rows, written by one thread; the tail's gradients
// and the loss are added in double, panel by panel in order. So every output is bit-identical for any number of
// threads.
#include <pyrgd/activations.h>
#include <pyrgd/grad.h>
#include <pyrgd/runtime.h>

#include "kernel_util.h"
#include "tail_plan.h"
#include "tile_ops.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyrgd {
namespace cpu {

using std::size_t;
using util::ceil_div;
using util::checked_mul;
using util::idx;
using util::thread_id;

namespace {

constexpr size_t kGradLanes = 16;  // at most this many lanes of blocks (the second-level sums of Z_2)
constexpr size_t kTailRows = 16;   // rows of a sub-chunk of the tail (the tasks of its parallel loop)
constexpr size_t kRecRows = 128;   // rows of a tile of the recomputed neurons' passes

// A byte range the next product will read or write (prefetched while the current one computes).
struct Ahead {
  const void* p;
  size_t bytes;
};

// Runs body(i0, i1) over the rows [0, m) of a product in kStages parts of whole register tiles (`tile` rows), and
// before each part asks for the next slice of every range in `ahead` (into L2). A product split by its rows gives
// the same bits (each element of C is its own chain), and the next product's operands arrive while this one
// computes: past the cache, the blocks of W_1, W_2, W_2^T, the gradients and the panel come from memory.
constexpr size_t kStages = 4;
template <class F, size_t NA>
inline void staged(size_t m, size_t tile, const Ahead (&ahead)[NA], F&& body) {
  const size_t per = std::max<size_t>(tile, ceil_div(ceil_div(m, kStages), tile) * tile);
  const size_t parts = ceil_div(m, per);
  for (size_t q = 0; q < parts; ++q) {
    for (const Ahead& a : ahead) {
      const char* c = static_cast<const char*>(a.p);
      const size_t o0 = a.bytes * q / parts / 64 * 64, o1 = a.bytes * (q + 1) / parts;
      if (c)
        for (size_t o = o0; o < o1; o += 64) __builtin_prefetch(c + o, 1, 2);
    }
    body(q * per, std::min(m, (q + 1) * per));
  }
}

// Lanes of consecutive blocks: at most kGradLanes, fixed by n1 alone (the order of the sums over lanes).
inline size_t grad_lanes(size_t nblocks) {
  return nblocks ? ceil_div(nblocks, ceil_div(nblocks, kGradLanes)) : 0;
}

// Who runs a lane in a phase of a panel: claim[li] holds the number (from 1) of the last panel whose phase took lane
// li, so that the lane is free in panel `epoch` while it holds epoch - 1 and one compare-and-swap takes it (no reset
// between panels: every lane is taken exactly once per panel).
inline bool take_lane(std::atomic<size_t>* claim, size_t li, size_t epoch) {
  size_t expected = epoch - 1;
  return claim[li].compare_exchange_strong(expected, epoch, std::memory_order_acq_rel, std::memory_order_relaxed);
}

}  // namespace

size_t grad_panel_rows(size_t N, size_t n1, size_t n2, size_t itemsize, int act) {
  const size_t nblocks = ceil_div(n1, kBlock);
  const size_t nlanes = grad_lanes(nblocks);
  const size_t arrays = act == pyrgd::act::Relu::code ? 1 : 2;  // S and D, or S alone (ReLU)
  const size_t per_row = (arrays * nblocks * kBlock + nlanes * n2) * itemsize;
  const size_t cap = kGradPanelBytes / std::max<size_t>(per_row, 1);  // rows within the hard budget
  if (cap < 16) return std::max<size_t>(1, std::min(cap, N));
  constexpr size_t q = kGradPanelRowsStep;
  size_t R = kGradPanelTarget / std::max<size_t>(per_row, 1) / q * q;  // rows of a panel of the target size
  R = std::max(kGradPanelRowsMin, std::min(kGradPanelRowsMax, R));
  R = std::min(R, cap >= q ? cap / q * q : cap / 16 * 16);
  return std::max<size_t>(1, std::min(R, N));
}

namespace {

// The large work arrays of network_grad, in elements of T, laid out one after the other in one workspace (each
// start rounded up to 64 bytes); what the shapes, the activation, panel_rows and kept decide, nothing else.
struct GradLayout {
  size_t nblocks, nbK, nbR, nK, bpl, nlanes, R;
  size_t w2t, w1b, g1b, sp, dp, hl, f2, gb, hr, total;  // offsets; total: the elements needed
};

GradLayout grad_layout(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t kept) {
  GradLayout L{};
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  L.nblocks = ceil_div(n1, kBlock);
  // blocks [0, nbK) are kept (the panels hold their S, D); blocks [nbK, nblocks) are recomputed
  L.nbK = std::min(L.nblocks, ceil_div(std::min(kept, n1), kBlock));
  L.nbR = L.nblocks - L.nbK;
  L.nK = std::min(n1, L.nbK * kBlock);
  L.bpl = L.nbK ? ceil_div(L.nbK, kGradLanes) : 1;
  L.nlanes = grad_lanes(L.nbK);  // ceil(nbK / bpl)
  L.R = panel_rows ? std::min(panel_rows, N) : grad_panel_rows(N, L.nK, n2, itemsize, act);
  const size_t align = std::max<size_t>(1, 64 / itemsize);  // each array starts on a cache line
  size_t at = 0;
  const auto take = [&](size_t count) {
    const size_t o = at;
    if (count > SIZE_MAX - o - align) throw std::length_error("network_grad: the work arrays exceed the address space");
    at = ceil_div(o + count, align) * align;
    return o;
  };
  const size_t szPanel = checked_mul(L.nbK, L.R, kBlock);
  L.w2t = take(checked_mul(L.nblocks, n2, kBlock));  // W2[T, :]^T block by block
  L.w1b = take(checked_mul(L.nblocks, d, kBlock));   // W1[:, T] block by block (contiguous)
  L.g1b = take(checked_mul(L.nblocks, d, kBlock));   // dW1[:, T] block by block
  L.sp = take(szPanel);                              // S of the panel, by blocks
  // ReLU: D is read off S in (B) (relu'(z) = [a1 relu(z) != 0]), so the panel holds S alone
  L.dp = take(act == pyrgd::act::Relu::code ? 0 : szPanel);
  L.hl = take(checked_mul(L.nlanes, L.R, n2));  // each lane's part of Z_2
  L.f2 = take(checked_mul(L.R, n2));            // Z_2 of the panel
  // G of the panel, or of all rows where some neurons are recomputed (their pass needs it)
  L.gb = take(checked_mul(L.nbR ? N : L.R, n2));
  L.hr = take(L.nbR ? checked_mul(N, n2) : 0);  // the recomputed neurons' part of Z_2, all rows
  L.total = at;
  return L;
}

}  // namespace

// Elements of slack so that the layout can start at the first 64-byte boundary of any workspace of T (NumPy's large
// arrays start 16 bytes past one, and a vector that straddles two cache lines costs two accesses).
inline size_t align_slack(size_t itemsize) { return 64 / itemsize - 1; }

template <class T>
T* align64(T* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<T*>((a + 63) / 64 * 64);
}

size_t grad_workspace_elems(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t kept) {
  return grad_layout(s, act, itemsize, panel_rows, kept).total + align_slack(itemsize);
}

template <class T>
double network_grad(const WideShape& s, size_t nt, const size_t* tdims, const T* X, const T* Y, const T* W1,
                    const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2, T* const* gWt,
                    double* grad_sq, size_t panel_rows, size_t kept, T* work, size_t work_elems) {
  if (!is_activation_code(act)) throw std::invalid_argument("act_code: unknown activation code " + std::to_string(act));
  const TileOps<T>& ops = active_tile_ops<T>();
  const size_t tr = size_t(ops.tile_rows);  // rows of a register tile: the products are split at multiples of it
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const GradLayout L = grad_layout(s, act, sizeof(T), panel_rows, kept);
  const size_t nblocks = L.nblocks, nbK = L.nbK, nbR = L.nbR, bpl = L.bpl, nlanes = L.nlanes, R = L.R;
  const T a1 = mult[0];
  const size_t nsub = ceil_div(R, kTailRows);  // the tail runs on sub-chunks of kTailRows rows of a panel
  const TailPlan<T> plan(nt, tdims, Wt, mult + 1, std::min(R, kTailRows));
  const size_t gsz = plan.grad_size(), nL = tdims[nt];
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), nbR ? nblocks : nlanes)));

  // The large arrays live in the caller's workspace (`work`, kept from call to call: no page faults and no
  // clearing per step), or in one allocated here; the small ones here. All outside the parallel region. The large
  // ones are not cleared (every value read is written first; the columns past n1 of the last block, which the
  // products never read but the activation epilogues pass over, are zeroed so that they hold finite values).
  const size_t need = L.total + align_slack(sizeof(T));
  std::unique_ptr<util::AlignedBuffer<T>> own;
  if (!work) {
    own.reset(new util::AlignedBuffer<T>(need, false));
    work = own->data();
  } else if (work_elems < need) {
    throw std::invalid_argument("workspace: expected at least " + std::to_string(need) + " elements, got " +
                                std::to_string(work_elems));
  }
  work = align64(work);  // every array of the layout starts on a cache line
  const bool relu = act == pyrgd::act::Relu::code;
  const size_t szPanel = checked_mul(nbK, R, kBlock);
  T* const W2Tp = work + L.w2t;
  T* const W1Bp = work + L.w1b;
  T* const G1Bp = work + L.g1b;
  T* const SP = work + L.sp;
  T* const DP = relu ? nullptr : work + L.dp;
  T* const HL = work + L.hl;
  T* const F2p = work + L.f2;
  T* const Gall = work + L.gb;
  T* const HR = work + L.hr;
  util::AlignedBuffer<T> Hgv(nbR ? checked_mul(size_t(P), kRecRows, n2) : 0);
  const size_t pbw = std::max(R, nbR ? kRecRows : 0) * kBlock;  // per thread: P (and S, D of the recomputed)
  util::AlignedBuffer<T> Pb(checked_mul(size_t(P), pbw * (nbR ? 3 : 1)));  // zero-filled: finite past column nb
  if (nbK == nblocks && n1 % kBlock) {
    std::fill(SP + (nblocks - 1) * R * kBlock, SP + szPanel, T(0));
    if (!relu) std::fill(DP + (nblocks - 1) * R * kBlock, DP + szPanel, T(0));
  }
  util::AlignedBuffer<T> tbuf(checked_mul(size_t(P), plan.thread_buffer_size()));  // the tail's buffers, per thread
  util::AlignedBuffer<T> gsub(checked_mul(nsub, gsz));  // each sub-chunk's tail gradients
  std::vector<double> tacc(gsz, 0.0), lsubv(nsub), q1(nblocks), q2(nblocks);
  // the lanes' claims in (A) and (B) (take_lane), all free before the first panel
  std::unique_ptr<std::atomic<size_t>[]> claimA(new std::atomic<size_t>[kGradLanes]),
      claimB(new std::atomic<size_t>[kGradLanes]);
  for (size_t li = 0; li < kGradLanes; ++li) {
    claimA[li].store(0, std::memory_order_relaxed);
    claimB[li].store(0, std::memory_order_relaxed);
  }
  util::PanelBarrier panel_barrier;  // the panels' barriers (kernel_util.h: why not omp barrier), sized below
  double loss = 0.0;
  T* const PB = Pb.data();
  T* const gcs = gsub.data();
  double* const lsub = lsubv.data();
  double* const ta = tacc.data();
  double* const q1p = q1.data();
  double* const q2p = q2.data();

#pragma omp parallel num_threads(P)
  {
    T* const Pt = PB + size_t(thread_id()) * pbw * (nbR ? 3 : 1);
    T* const St = Pt + pbw;      // S, D of a tile of the recomputed neurons (nbR > 0)
    T* const Dt = St + pbw;
    T* const tb = tbuf.data() + size_t(thread_id()) * plan.thread_buffer_size();
    // this thread's own range of lanes, where it starts in (A); the lanes it ran in (A), in order
    const size_t nth = size_t(util::team_size()), me = size_t(thread_id());
    const size_t lane0 = me * nlanes / nth, lane1 = (me + 1) * nlanes / nth;
    size_t ranA[kGradLanes];
#pragma omp single
    panel_barrier.set_size(unsigned(nth));  // the team as it is (the runtime may give fewer than P threads)
#pragma omp for schedule(dynamic)
    for (idx bi = 0; bi < idx(nblocks); ++bi) {  // W_2^T by blocks: W2[T, :]^T (n2 x kBlock) contiguous
      const size_t t0 = size_t(bi) * kBlock, t1 = std::min(n1, t0 + kBlock);
      T* const wt = W2Tp + size_t(bi) * n2 * kBlock;
      for (size_t t = t0; t < t1; ++t)
        for (size_t c = 0; c < n2; ++c) wt[c * kBlock + (t - t0)] = W2[t * n2 + c];
      T* const wb = W1Bp + size_t(bi) * d * kBlock;
      for (size_t k = 0; k < d; ++k)
        for (size_t t = t0; t < t1; ++t) wb[k * kBlock + (t - t0)] = W1[k * n1 + t];
    }  // implicit barrier
    // the recomputed neurons' part of Z_2, HR = sum over their blocks of S W2[T, :], per tile of rows: the blocks
    // of each group of kSuperBlocks summed, then the groups in order
    if (nbR) {
#pragma omp for schedule(dynamic)
      for (idx ti = 0; ti < idx(ceil_div(N, kRecRows)); ++ti) {
        const size_t c0 = size_t(ti) * kRecRows, rows = std::min(kRecRows, N - c0);
        T* const H = HR + c0 * n2;
        T* const Hg = Hgv.data() + size_t(thread_id()) * kRecRows * n2;  // a group's sum
        for (size_t g0 = nbK; g0 < nblocks; g0 += kSuperBlocks) {
          const size_t g1 = std::min(nblocks, g0 + kSuperBlocks);
          for (size_t blk = g0; blk < g1; ++blk) {
            const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
            ops.gemm_nn_act(rows, nb, d, X + c0 * d, d, W1Bp + blk * d * kBlock, kBlock, St, kBlock, act, gamma, a1,
                            nullptr, 0);
            ops.gemm_nn(rows, n2, nb, St, kBlock, W2 + t0 * n2, n2, g0 == nbK ? H : Hg, n2, blk > g0);
          }
          if (g0 > nbK) ops.add_into(rows * n2, H, Hg);
        }
      }  // implicit barrier
    }
    for (size_t r0 = 0; r0 < N; r0 += R) {
      const size_t rows = std::min(R, N - r0);
      const bool acc = r0 > 0;
      const T* const Xr = X + r0 * d;
      T* const Gp = nbR ? Gall + r0 * n2 : Gall;
      const size_t epoch = r0 / R + 1;
      // (A) per block: Z = X W1[:, T], S = a1 sigma(Z), D = a1 sigma'(Z); the lane's Z_2 += S W2[T, :]
      const auto lane_A = [&](size_t li) {
        const size_t b0 = li * bpl, b1 = std::min(nbK, b0 + bpl);
        T* const H = HL + li * R * n2;
        for (size_t blk = b0; blk < b1; ++blk) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          T* const S = SP + blk * R * kBlock;
          T* const D = relu ? nullptr : DP + blk * R * kBlock;
          const T* const W1b = W1Bp + blk * d * kBlock;
          // while Z is computed, W2[T, :] of the next product; while Z_2 is, the next block's W1
          const Ahead nextW2[] = {{W2 + t0 * n2, nb * n2 * sizeof(T)}};
          staged(rows, tr, nextW2, [&](size_t i0, size_t i1) {
            if (relu)
              ops.gemm_nn_act(i1 - i0, nb, d, Xr + i0 * d, d, W1b, kBlock, S + i0 * kBlock, kBlock, act, gamma, a1,
                              nullptr, kPrefetchC);
            else
              ops.gemm_nn_act_both(i1 - i0, nb, d, Xr + i0 * d, d, W1b, kBlock, S + i0 * kBlock, kBlock, act, gamma,
                                   a1, D + i0 * kBlock, kPrefetchC | kPrefetchM);
          });
          const Ahead nextW1[] = {{blk + 1 < b1 ? W1b + d * kBlock : nullptr, d * kBlock * sizeof(T)}};
          staged(rows, tr, nextW1, [&](size_t i0, size_t i1) {
            ops.gemm_nn(i1 - i0, n2, nb, S + i0 * kBlock, kBlock, W2 + t0 * n2, n2, H + i0 * n2, n2, blk > b0);
          });
        }
      };
      size_t nran = 0;
      for (size_t li = lane0; li < lane1; ++li)  // its own range, front to back
        if (take_lane(claimA.get(), li, epoch)) {
          lane_A(li);
          ranA[nran++] = li;
        }
      for (size_t k = 1; k < nth; ++k) {  // then what the others have not started, from the back of their ranges
        const size_t o = (me + k) % nth, o0 = o * nlanes / nth, o1 = (o + 1) * nlanes / nth;
        for (size_t li = o1; li-- > o0;)
          if (take_lane(claimA.get(), li, epoch)) {
            lane_A(li);
            ranA[nran++] = li;
          }
      }
      panel_barrier.wait();
      // (T) Z_2 of the panel (the lanes in order), then the tail on its rows: the panel's G, loss, tail gradients
#pragma omp for schedule(dynamic) nowait
      for (idx si = 0; si < idx(nsub); ++si) {
        const size_t rs = size_t(si) * kTailRows;
        if (rs >= rows) continue;
        const size_t rr = std::min(kTailRows, rows - rs), cnt = rr * n2;
        T* const f2 = F2p + rs * n2;
        // the recomputed neurons' part first (where there are some), then the lanes in order
        const T* const first = nbR ? HR + (r0 + rs) * n2 : HL + rs * n2;
        std::copy(first, first + cnt, f2);
        for (size_t l = nbR ? 0 : 1; l < nlanes; ++l) ops.add_into(cnt, f2, HL + l * R * n2 + rs * n2);
        lsub[si] = plan.run(ops, act, gamma, rr, f2, Y + (r0 + rs) * nL, Gp + rs * n2, gcs + size_t(si) * gsz, tb);
      }
      panel_barrier.wait();  // G of the panel is complete
#pragma omp single nowait
      {
        for (size_t si = 0; si * kTailRows < rows; ++si) {
          loss += lsub[si];
          const T* g = gcs + si * gsz;
          for (size_t e = 0; e < gsz; ++e) ta[e] += double(g[e]);
        }
      }
      // (B) per block, the lanes this thread ran in (A) in the reverse order, so that the S and D written last,
      // still in this core's cache, are read first, then any lane not yet started: P = G W2[T, :]^T,
      // D = P (.) D, dW2[T, :] (+)= S^T G, dW1[:, T] (+)= X^T D. A barrier after it: the next panel's (A)
      // rewrites S, D and G, and a block's gradients must take this panel's share before the next one's.
      const auto lane_B = [&](size_t li) {
        const size_t b0 = li * bpl, b1 = std::min(nbK, b0 + bpl);
        for (size_t blk = b1; blk-- > b0;) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          const T* const S = SP + blk * R * kBlock;
          const T* const D = relu ? nullptr : DP + blk * R * kBlock;
          const T* const W2Tb = W2Tp + blk * n2 * kBlock;
          T* const G2b = gW2 + t0 * n2;
          T* const G1b = G1Bp + blk * d * kBlock;
          const int gf = (acc ? kAccumulate : 0) | kPrefetchC;  // the gradient blocks: from memory past the cache
          // while P is computed, S and dW2[T, :] of the next product; while dW2 is, dW1[:, T]; while dW1 is, the
          // next block's W2^T and D (or S)
          const Ahead forG2[] = {{S, rows * kBlock * sizeof(T)}, {G2b, nb * n2 * sizeof(T)}};
          staged(rows, tr, forG2, [&](size_t i0, size_t i1) {
            if (relu)
              ops.gemm_nn_mul_relu(i1 - i0, nb, n2, Gp + i0 * n2, n2, W2Tb, kBlock, Pt + i0 * kBlock, kBlock,
                                   S + i0 * kBlock, a1, kPrefetchM);
            else
              ops.gemm_nn_mul(i1 - i0, nb, n2, Gp + i0 * n2, n2, W2Tb, kBlock, Pt + i0 * kBlock, kBlock,
                              D + i0 * kBlock, kPrefetchM);
          });
          const Ahead forG1[] = {{G1b, d * kBlock * sizeof(T)}};
          staged(nb, tr, forG1, [&](size_t i0, size_t i1) {
            ops.gemm_tn(i1 - i0, n2, rows, S + i0, kBlock, Gp, n2, G2b + i0 * n2, n2, gf);
          });
          const bool more = blk > b0;
          const Ahead nextB[] = {{more ? W2Tb - n2 * kBlock : nullptr, n2 * kBlock * sizeof(T)},
                                 {more ? (relu ? S : D) - R * kBlock : nullptr, rows * kBlock * sizeof(T)}};
          staged(d, tr, nextB, [&](size_t i0, size_t i1) {
            ops.gemm_tn(i1 - i0, nb, rows, Xr + i0, d, Pt, kBlock, G1b + i0 * kBlock, kBlock, gf);
          });
        }
      };
      for (size_t k = nran; k-- > 0;)
        if (take_lane(claimB.get(), ranA[k], epoch)) lane_B(ranA[k]);
      for (size_t li = 0; li < nlanes; ++li)
        if (take_lane(claimB.get(), li, epoch)) lane_B(li);
      panel_barrier.wait();
    }
    // the recomputed neurons' gradients, per block (one thread each) and tile of rows: Z = X W1[:, T] again,
    // S = a1 sigma(Z), D = a1 sigma'(Z), P = G W2[T, :]^T (.) D, dW2[T, :] (+)= S^T G, dW1[:, T] (+)= X^T P
    if (nbR) {
#pragma omp for schedule(dynamic)
      for (idx bi = idx(nbK); bi < idx(nblocks); ++bi) {
        const size_t blk = size_t(bi), t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
        for (size_t c0 = 0; c0 < N; c0 += kRecRows) {
          const size_t rows = std::min(kRecRows, N - c0);
          const T* const Xc = X + c0 * d;
          const T* const Gc = Gall + c0 * n2;
          const T* const W1b = W1Bp + blk * d * kBlock;
          if (relu) {
            ops.gemm_nn_act(rows, nb, d, Xc, d, W1b, kBlock, St, kBlock, act, gamma, a1, nullptr, 0);
            ops.gemm_nn_mul_relu(rows, nb, n2, Gc, n2, W2Tp + blk * n2 * kBlock, kBlock, Pt, kBlock, St, a1, 0);
          } else {
            ops.gemm_nn_act_both(rows, nb, d, Xc, d, W1b, kBlock, St, kBlock, act, gamma, a1, Dt, 0);
            ops.gemm_nn_mul(rows, nb, n2, Gc, n2, W2Tp + blk * n2 * kBlock, kBlock, Pt, kBlock, Dt, 0);
          }
          ops.gemm_tn(nb, n2, rows, St, kBlock, Gc, n2, gW2 + t0 * n2, n2, c0 > 0);
          ops.gemm_tn(d, nb, rows, Xc, d, Pt, kBlock, G1Bp + blk * d * kBlock, kBlock, c0 > 0);
        }
      }  // implicit barrier
    }
    // squared norms of the wide layer's gradients, per block in double
#pragma omp for schedule(dynamic)
    for (idx bi = 0; bi < idx(nblocks); ++bi) {
      const size_t t0 = size_t(bi) * kBlock, nb = std::min(kBlock, n1 - t0);
      double a = 0.0, c = 0.0;
      const T* const gb = G1Bp + size_t(bi) * d * kBlock;
      for (size_t k = 0; k < d; ++k)
        for (size_t b = 0; b < nb; ++b) {
          const T g = gb[k * kBlock + b];
          gW1[k * n1 + t0 + b] = g;
          a += double(g) * double(g);
        }
      for (size_t e = t0 * n2; e < (t0 + nb) * n2; ++e) {
        const double g = double(gW2[e]);
        c += g * g;
      }
      q1p[bi] = a;
      q2p[bi] = c;
    }
  }
  double t1 = 0.0, t2 = 0.0;
  for (size_t blk = 0; blk < nblocks; ++blk) {
    t1 += q1p[blk];
    t2 += q2p[blk];
  }
  grad_sq[0] = t1;
  grad_sq[1] = t2;
  for (size_t j = 0; j < nt; ++j) {
    double sq = 0.0;
    for (size_t e = 0; e < plan.grad_count(j); ++e) {
      const T g = T(ta[plan.grad_offset(j) + e]);
      gWt[j][e] = g;
      sq += double(g) * double(g);
    }
    grad_sq[2 + j] = sq;
  }
  return loss;
}

template <class T>
void sgd_update(size_t count, T* W, const T* G, T lr) {
  constexpr size_t kChunk = size_t(1) << 15;
  const size_t nchunks = ceil_div(count, kChunk);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), nchunks)));
#pragma omp parallel for schedule(static) num_threads(P)
  for (idx c = 0; c < idx(nchunks); ++c) {
    const size_t e0 = size_t(c) * kChunk, e1 = std::min(count, e0 + kChunk);
    for (size_t e = e0; e < e1; ++e) W[e] -= lr * G[e];
  }
}

template void sgd_update<float>(size_t, float*, const float*, float);
template void sgd_update<double>(size_t, double*, const double*, double);

template double network_grad<float>(const WideShape&, size_t, const size_t*, const float*, const float*, const float*,
                                    const float*, const float* const*, const float*, int, float, float*, float*,
                                    float* const*, double*, size_t, size_t, float*, size_t);
template double network_grad<double>(const WideShape&, size_t, const size_t*, const double*, const double*,
                                     const double*, const double*, const double* const*, const double*, int, double,
                                     double*, double*, double* const*, double*, size_t, size_t, double*, size_t);

}  // namespace cpu
}  // namespace pyrgd

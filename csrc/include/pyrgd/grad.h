// pyrgd/grad.h -- the loss and every gradient of the whole network (wide layer and tail) on the CPU in one pass over
// panels of rows, what a training step calls; the size of its workspace and of its panels; the weight update.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h); implemented in csrc/cpu/grad_kernels.cpp. Namespace pyrgd::cpu.
// Conventions as in pyrgd/wide.h: dense row-major arrays of one floating type T (float or double), owned by the
// caller and passed as raw pointers, every dimension >= 1; X (N, d), W_1 (d, n1), W_2 (n1, n2); `act` a code of
// pyrgd/activations.h, `gamma` its slope.
#ifndef PYRGD_GRAD_H
#define PYRGD_GRAD_H

#include <cstddef>
#include <functional>

#include "pyrgd/runtime.h"
#include "pyrgd/wide.h"

namespace pyrgd {
namespace cpu {

// The panel of network_grad (S and D of its rows, or S alone for ReLU, and the lanes' Z_2): at most kGradPanelBytes,
// kGradPanelTarget aimed at, kGradPanelRowsMin..kGradPanelRowsMax rows in steps of kGradPanelRowsStep.
constexpr std::size_t kGradPanelBytes = std::size_t(16) << 20;
constexpr std::size_t kGradPanelTarget = std::size_t(4) << 20;
constexpr std::size_t kGradPanelRowsMin = 96, kGradPanelRowsMax = 240;
constexpr std::size_t kGradPanelRowsStep = 48;  // whole 6-row register tiles and 16-row tail sub-chunks
// Row groups of network_grad: the panels split into at most kGradGroupsMax runs of consecutive panels, each with its
// own gradient accumulators (the extra ones, all groups but the first, at most kGradGroupBytes together).
constexpr std::size_t kGradGroupsMax = 8;
constexpr std::size_t kGradGroupBytes = std::size_t(32) << 20;

// The loss Phi = 1/2 ||F_L - Y||_F^2 (returned, accumulated in double) and every gradient dPhi/dW_l at the current
// weights, in one pass over panels of R rows: per panel, Z_1 of the kept neurons, S = a1 sigma(Z_1) and
// a1 sigma'(Z_1) kept for the panel, Z_2 = S W_2, the tail on those rows (pyrgd/tail.h), then the panel's share of
// every gradient. Each product of the wide layer is done once (step of pyrgd/wide.h computes Z_1 = X W_1 twice),
// at the price of R x n1 values of S and sigma' per panel, W_2^T and the gradients held until the last panel.
//   Shapes: s = (N, d, n1, n2); nt = L - 2 tail weights; tdims = [n_2, ..., n_L] (nt + 1 values); X (N, d),
//   Y (N, n_L), W1 (d, n1), W2 (n1, n2), Wt[j] = W_{j+3} (tdims[j], tdims[j+1]); mult = [a_1, ..., a_{L-1}]
//   (nt + 1 values).
//   Out: gW1 (d, n1), gW2 (n1, n2), gWt[j] (tdims[j], tdims[j+1]) receive dPhi/dW_l (their previous content is
//   ignored; they must not overlap the inputs or each other); grad_sq (L = nt + 2 values) receives
//   ||dPhi/dW_l||_F^2 (in double).
//   panel_rows: R, or 0 for grad_panel_rows(N, the kept neurons in whole blocks, n2, sizeof(T), act); at most N.
//   kept: the panels hold S and sigma' of the first min(kept, n1) neurons, rounded up to whole blocks of kBlock; the
//   others are recomputed (X W_1 twice for them, as in step; G and their part of Z_2 for all N rows, two N x n2
//   arrays of the workspace). kept >= n1: every neuron kept.
//   Memory: work, when not null, is the caller's workspace of work_elems elements of T, at any alignment, at least
//   grad_workspace_elems(...) for the same arguments (threads = 1), sharing no memory with the other arrays; its
//   content on entry is ignored and on return is undefined. work == nullptr: the kernel allocates
//   grad_workspace_elems(..., threads = 1) itself, once per call (one slot: the team schedule). Besides it, only per-thread buffers of a few rows and the tail's gradients are allocated; never N x n1
//   values unless a panel of that size is asked for.
//   Errors: an unknown `act`, or a workspace smaller than needed, is std::invalid_argument (before anything is
//   written); std::length_error when the work arrays' size overflows; std::bad_alloc.
//   Row groups and threads: the panels form grad_row_groups(...) groups of consecutive panels, each accumulating its
//   own share of the gradients, added in group order at the end. Where the workspace has a slot per thread
//   (grad_workspace_elems with threads = get_num_threads(), at least two groups per thread), each thread may run
//   whole groups on its own, meeting the others only at the end (a thread slowed down by another process leaves
//   groups to the others; set_grad_schedule below says when); else the team runs each panel together, its lanes of
//   neurons shared.
//   Determinism: bit-identical for any number of threads and either schedule (the panels, groups and lanes are
//   fixed by the shapes, R and kept; see grad_kernels.cpp).
template <class T>
double network_grad(const WideShape& s, std::size_t nt, const std::size_t* tdims, const T* X, const T* Y,
                    const T* W1, const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2,
                    T* const* gWt, double* grad_sq, std::size_t panel_rows, std::size_t kept, T* work,
                    std::size_t work_elems);

// The elements of T that network_grad's `work` must hold for these shapes, activation, itemsize = sizeof(T),
// panel_rows and kept: W_2^T, W_1 and its gradient by blocks, the panel, the lanes' Z_2, G and, with recomputed
// neurons, their Z_2 of all rows, plus slack to align them to 64 bytes. A caller that keeps the workspace from step
// to step saves their allocation (page faults and the clearing of fresh pages) on every call. threads: the threads
// it will run on; where they can run groups of their own, one panel's arrays per thread (a slot each), else one.
// Pure; std::length_error when the size overflows size_t.
std::size_t grad_workspace_elems(const WideShape& s, int act, std::size_t itemsize, std::size_t panel_rows,
                                 std::size_t kept, std::size_t threads = 1);

// The row groups of network_grad for these arguments: 1 where some neurons are recomputed, else
// g = min(kGradGroupsMax, panels / 2, 1 + kGradGroupBytes / (one group's gradients of the kept neurons)) where
// g >= 4 (two groups for each of two threads), else 1. Pure.
std::size_t grad_row_groups(const WideShape& s, int act, std::size_t itemsize, std::size_t panel_rows,
                            std::size_t kept);

// R of network_grad for N rows, n1 kept neurons, n2 and itemsize bytes per value: the largest multiple of
// kGradPanelRowsStep rows whose panel (S and D, or S alone when `act` is ReLU's code, and the lanes' Z_2) fits in
// kGradPanelTarget, clamped to [kGradPanelRowsMin, kGradPanelRowsMax] (every panel runs the kept neurons' blocks of
// W_1, W_2, W_2^T and both gradients through the cache once: more rows amortize that traffic, the tail and two
// barriers, and fewer rows make the products' inner dimension short), then cut to what fits in kGradPanelBytes (a
// multiple of 48 rows, or of 16 below 48); where not even 16 rows fit there (a very wide layer), as many rows as
// fit, at least 1; at most N. The panel is thus at most max(kGradPanelBytes, one row), never N x n1 unless N is that
// small. `act` is only compared with ReLU's code (any other value: the panel holds S and D). Pure, never throws.
std::size_t grad_panel_rows(std::size_t N, std::size_t n1, std::size_t n2, std::size_t itemsize, int act);

// Blocks of kBlock neurons per lane of network_grad for a wide layer of n1 neurons, every one kept: Z_2 of a panel
// is the sum, in lane order, of each lane's part (a lane: this many consecutive blocks, at most 16 lanes), so a
// shard of a distributed run holds whole lanes (network_grad_shard). Pure.
std::size_t grad_lane_blocks(std::size_t n1);

// Panels per call of a shard's combine (GradShard): the ranks meet once per batch of up to this many consecutive
// panels of a row group rather than once per panel (each meeting costs the slowest rank's lag and two messages);
// a shard's workspace then holds that many panels' S and sigma'.
constexpr std::size_t kGradShardBatch = 4;

// One rank's share of network_grad in a run whose wide layer is sharded over ranks by lanes of neurons
// (pyrgd.distributed.ShardedRowsEngine). The rank holds consecutive whole lanes of the layer, its columns of W_1 and
// rows of W_2 (the shard: s.n1 of its neurons); X, Y and the tail are the whole run's. The panels (panel_rows) and
// row groups are the whole layer's, so each gradient element of the shard is the sum network_grad forms for it.
template <class T>
struct GradShard {
  std::size_t lane_blocks = 0;  // grad_lane_blocks(n1 of the whole layer)
  std::size_t groups = 0;       // grad_row_groups(shapes of the whole layer, every neuron kept)
  // Called by one thread, once per batch of consecutive panels of a row group (at most kGradShardBatch), in panel
  // order, when the shard's lanes' parts of Z_2 for the batch's rows [r0, r0 + rows) are ready (lane l of nlanes:
  // rows x n2 values, row-major, at lanes + l * lane_stride): writes their whole Z_2 (rows x n2, row-major) into
  // f2, i.e. every lane of the layer added in lane order, starting from a copy of lane 0. It may throw: the call
  // then stops at the next batch and rethrows it.
  std::function<void(std::size_t r0, std::size_t rows, const T* lanes, std::size_t nlanes, std::size_t lane_stride,
                     T* f2)>
      combine;
  double* block_sq = nullptr;   // null, or 2 x (the shard's blocks): ||dW_1 block||^2 per block, then ||dW_2 block||^2
};

// network_grad on a shard (GradShard): s = (N, d, the shard's n1, n2), W1 (d, s.n1) and W2 (s.n1, n2) its neurons'
// weights, gW1 and gW2 their gradients; the loss, the tail's gradients and grad_sq[2..] are the whole network's (the
// same on every rank); grad_sq[0], grad_sq[1] the shard's (block_sq gives them per block, for a sum in block order
// across the ranks). panel_rows: the whole layer's R (grad_panel_rows). Runs the threads as a team. work: at least
// grad_shard_workspace_elems(...) elements, or null. std::invalid_argument for a bad shard (before any write).
template <class T>
double network_grad_shard(const WideShape& s, std::size_t nt, const std::size_t* tdims, const T* X, const T* Y,
                          const T* W1, const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1,
                          T* gW2, T* const* gWt, double* grad_sq, std::size_t panel_rows, const GradShard<T>& shard,
                          T* work, std::size_t work_elems);

// The workspace elements of network_grad_shard for the shard's shapes s, the whole layer's panel_rows, lane_blocks
// and groups; std::invalid_argument where these do not describe a shard, std::length_error on overflow.
std::size_t grad_shard_workspace_elems(const WideShape& s, int act, std::size_t itemsize, std::size_t panel_rows,
                                       std::size_t lane_blocks, std::size_t groups);

// The schedule of network_grad's threads where the workspace lets it choose (a slot per thread, see network_grad):
// kGradScheduleTeam (all threads on each panel), kGradScheduleGroups (whole row groups per thread) or
// kGradScheduleAuto (the default: each call timed, the faster of the two for the call's shapes and threads run,
// the other tried again every few calls). Process-wide; the default is the environment variable
// PYRGD_GRAD_SCHEDULE ('auto', 'team' or 'groups'; unset or another value: auto). The bits do not depend on it. set_grad_schedule throws
// std::invalid_argument on another value; last_grad_schedule: what the last call ran (-1 before any).
constexpr int kGradScheduleAuto = 0, kGradScheduleTeam = 1, kGradScheduleGroups = 2;
void set_grad_schedule(int schedule);
int get_grad_schedule();
int last_grad_schedule();

// W[e] -= lr G[e] for e < count (the product rounded, then the difference: the bits of NumPy's W -= lr * G), in
// parallel over chunks. W and G (count values each, the caller's) must not overlap. Never throws.
template <class T>
void sgd_update(std::size_t count, T* W, const T* G, T lr);

extern template double network_grad<float>(const WideShape&, std::size_t, const std::size_t*, const float*,
                                            const float*, const float*, const float*, const float* const*,
                                            const float*, int, float, float*, float*, float* const*, double*,
                                            std::size_t, std::size_t, float*, std::size_t);
extern template double network_grad<double>(const WideShape&, std::size_t, const std::size_t*, const double*,
                                             const double*, const double*, const double*, const double* const*,
                                             const double*, int, double, double*, double*, double* const*, double*,
                                             std::size_t, std::size_t, double*, std::size_t);
extern template double network_grad_shard<float>(const WideShape&, std::size_t, const std::size_t*, const float*,
                                                  const float*, const float*, const float*, const float* const*,
                                                  const float*, int, float, float*, float*, float* const*, double*,
                                                  std::size_t, const GradShard<float>&, float*, std::size_t);
extern template double network_grad_shard<double>(const WideShape&, std::size_t, const std::size_t*, const double*,
                                                   const double*, const double*, const double*, const double* const*,
                                                   const double*, int, double, double*, double*, double* const*,
                                                   double*, std::size_t, const GradShard<double>&, double*,
                                                   std::size_t);
extern template void sgd_update<float>(std::size_t, float*, const float*, float);
extern template void sgd_update<double>(std::size_t, double*, const double*, double);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_GRAD_H

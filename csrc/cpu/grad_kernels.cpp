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
// Row groups: the panels form at most kGradGroupsMax groups of consecutive panels (sizes falling from about 1.5 to
// 0.5 times the mean, fixed by the shapes), each accumulating its own share of the gradients (group 0 in the
// outputs, the others in the workspace), added in group order at the end.
// Threads, two schedules with the same bits (ScheduleChooser says which runs):
// - the team: all threads on each panel, over lanes of consecutive blocks of kBlock neurons. In (A) each thread
//   starts on its own contiguous range of lanes, front to back, and when done takes the lanes the other threads
//   have not started, from the back of their ranges; in (B) it runs the lanes it did in (A) backwards (the
//   freshest S and D first, still in its cache), then takes any lane not yet started. A lane is claimed by one
//   atomic compare-and-swap of its panel number, so on a quiet machine each thread keeps its own range (each keeps
//   its share of the weights, gradients and panel in its cache). Three barriers per panel.
// - groups: where the workspace has a slot (one panel's arrays) per thread and there are at least two groups per
//   thread, each thread takes whole groups (an atomic counter) and runs their panels alone, meeting the others only
//   at the end. Beside another process a preempted thread then holds up nobody (in the team it holds its partner
//   at every barrier until the scheduler gives it its CPU back, milliseconds), and a thread slowed down leaves the
//   remaining groups to the others; the smaller last groups bound the wait at the end. A team that uses every CPU
//   it may run on is pinned one thread per CPU for the call (util::CpuPin; the scheduler otherwise put both threads
//   on one CPU a third of the time beside a busy process).
// The tail, the recomputed neurons' passes and the small loops take their items dynamically.
// Determinism: Z_2 of a panel is the recomputed neurons' part (per row tile, sums over groups of kSuperBlocks blocks
// added in order), then the sum over lanes, in lane order, of each lane's sum over its blocks in order (one FMA chain
// per block); each gradient element is, per row group, a sum over its panels (or row tiles), in order, of one FMA
// chain over their rows, then the sum over the groups in order; the lanes, panel rows and groups are fixed by the
// shapes and `kept` alone; the tail's gradients and the loss are added in double, panel by panel in order within a
// group, then over the groups in order. So every output is bit-identical for any number of threads and either
// schedule, whoever runs a lane or a group.
#include <pyrgd/activations.h>
#include <pyrgd/grad.h>
#include <pyrgd/runtime.h>

#include "kernel_util.h"
#include "tail_plan.h"
#include "tile_ops.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <cstdint>
#include <exception>
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
constexpr size_t kShardBatch = kGradShardBatch;  // panels per combine of a shard (pyrgd/grad.h)
constexpr int kPhaseA = 1, kPhaseTB = 2;  // the phases of a panel: (A); the tail and (B)

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
// start rounded up to 64 bytes); what the shapes, the activation, panel_rows, kept and the slots decide, nothing
// else. A slot is one panel's arrays (S, D, the lanes' Z_2, Z_2, G): one per thread that runs groups of its own.
struct GradLayout {
  size_t nblocks, nbK, nbR, nK, bpl, nlanes, R, npanels, groups, slots;
  size_t batch;                        // panels a slot holds (a shard: kShardBatch; else 1)
  size_t w2t, w1b, g1b, g1x, g2x, hr;  // offsets of the shared arrays
  size_t sp, dp, hl, f2, gb;           // offsets of slot 0's arrays; slot k's at + k * slot
  size_t slot, total;                  // elements of a slot; elements needed
};

// Row groups: the panels split into `groups` runs of consecutive panels (fixed by the shapes alone), each with its
// own accumulators of the gradients, added in group order at the end. Several per thread let threads run whole
// groups without meeting at the panels' barriers; several in all let a slowed-down thread leave groups to others.
inline size_t grad_groups(size_t npanels, size_t nbR, size_t d, size_t n2, size_t nK, size_t itemsize) {
  if (nbR || npanels < 2) return 1;  // recomputed neurons: their passes need G of every row, one group
  const size_t per = checked_mul(d + n2, std::max<size_t>(nK, 1), itemsize);  // one group's extra accumulators
  const size_t g = std::min({kGradGroupsMax, npanels / 2, 1 + kGradGroupBytes / per});  // two panels a group at least
  return g >= 4 ? g : 1;  // fewer than two groups for each of two threads: no thread could run groups of its own
}

// The first panel of row group g of `groups` over `npanels` panels (g = groups: npanels): sizes falling from about
// 1.5 to 0.5 times the mean (a "guided" split: the groups taken last are the smallest, so that a thread slowed down
// that takes one of them holds up the others less), each at least one panel.
inline size_t group_begin(size_t g, size_t groups, size_t npanels) {
  if (g == 0) return 0;
  if (g >= groups) return npanels;
  const double x = double(g) / double(groups);
  const double f = 0.5 * x + 0.5 * (1.0 - (1.0 - x) * (1.0 - x));  // half uniform, half linearly falling sizes
  const size_t b = size_t(double(npanels) * f + 0.5);
  return std::min(npanels - (groups - g), std::max(g, b));
}

// Slots worth having for `threads` threads: one per thread where each thread can run groups of its own (at least
// two groups per thread, so that one slowed down leaves work to the others), else one (the team runs each panel).
inline size_t grad_slots(size_t groups, size_t threads) {
  return threads >= 2 && 2 * threads <= groups ? threads : 1;
}

// lane_blocks, groups: a shard's (GradShard) lanes and row groups, those of the whole layer; 0: from these shapes.
GradLayout grad_layout(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t kept, size_t threads,
                       size_t lane_blocks = 0, size_t groups = 0) {
  GradLayout L{};
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  L.nblocks = ceil_div(n1, kBlock);
  // blocks [0, nbK) are kept (the panels hold their S, D); blocks [nbK, nblocks) are recomputed
  L.nbK = std::min(L.nblocks, ceil_div(std::min(kept, n1), kBlock));
  L.nbR = L.nblocks - L.nbK;
  L.nK = std::min(n1, L.nbK * kBlock);
  L.bpl = lane_blocks ? lane_blocks : L.nbK ? ceil_div(L.nbK, kGradLanes) : 1;
  L.nlanes = lane_blocks ? ceil_div(L.nbK, lane_blocks) : grad_lanes(L.nbK);  // ceil(nbK / bpl)
  L.R = panel_rows ? std::min(panel_rows, N) : grad_panel_rows(N, L.nK, n2, itemsize, act);
  L.npanels = ceil_div(N, L.R);
  L.groups = groups ? groups : grad_groups(L.npanels, L.nbR, d, n2, L.nK, itemsize);
  L.slots = lane_blocks ? 1 : grad_slots(L.groups, std::max<size_t>(threads, 1));  // a shard: the team
  L.batch = lane_blocks ? std::min(kShardBatch, L.npanels) : 1;
  const size_t align = std::max<size_t>(1, 64 / itemsize);  // each array starts on a cache line
  const auto taker = [align](size_t& at) {
    return [&at, align](size_t count) {
      const size_t o = at;
      if (count > SIZE_MAX - o - align)
        throw std::length_error("network_grad: the work arrays exceed the address space");
      at = ceil_div(o + count, align) * align;
      return o;
    };
  };
  size_t at = 0, in_slot = 0;
  const auto take = taker(at);
  const auto take_slot = taker(in_slot);
  const size_t szPanel = checked_mul(L.nbK, L.R, kBlock);
  // one slot: S of the panel by blocks; D (ReLU: read off S in (B), relu'(z) = [a1 relu(z) != 0], so none); each
  // lane's part of Z_2; Z_2 of the panel; G of the panel, or of all rows where some neurons are recomputed. A
  // shard's slot holds a batch of consecutive panels: their S, D one after the other, each lane's part of Z_2 of
  // the batch's rows (batch R x n2, so that the batch's rows are one block per lane), and Z_2, G of those rows.
  const size_t RB = checked_mul(L.batch, L.R);
  const size_t sp = take_slot(checked_mul(L.batch, szPanel));
  const size_t dp = take_slot(act == pyrgd::act::Relu::code ? 0 : checked_mul(L.batch, szPanel));
  const size_t hl = take_slot(checked_mul(L.nlanes, RB, n2));
  const size_t f2 = take_slot(checked_mul(RB, n2));
  const size_t gb = take_slot(checked_mul(L.nbR ? N : RB, n2));
  L.slot = in_slot;
  L.w2t = take(checked_mul(L.nblocks, n2, kBlock));                 // W2[T, :]^T block by block
  L.w1b = take(checked_mul(L.nblocks, d, kBlock));                  // W1[:, T] block by block (contiguous)
  L.g1b = take(checked_mul(L.nblocks, d, kBlock));                  // dW1[:, T] block by block (group 0's)
  L.g1x = take(checked_mul(L.groups - 1, L.nbK * d, kBlock));       // groups 1..: their dW1 blocks
  L.g2x = take(checked_mul(L.groups - 1, L.nK, n2));                // groups 1..: their dW2 rows
  L.hr = take(L.nbR ? checked_mul(N, n2) : 0);                      // the recomputed neurons' part of Z_2, all rows
  const size_t base = take(checked_mul(L.slots, L.slot));
  L.sp = base + sp;
  L.dp = base + dp;
  L.hl = base + hl;
  L.f2 = base + f2;
  L.gb = base + gb;
  L.total = at;
  return L;
}

// Which schedule a call runs where it may run either (a slot per thread): both give the same bits, so the choice
// is one of speed alone. On a quiet machine the team is faster (each thread keeps its lanes' share of the weights,
// gradients and panel in its own cache, and one set of gradient accumulators stays there: about 10% on B1 with two
// threads); beside another process whole groups per thread are (a preempted thread holds no barrier: 1.4x). What
// the machine is doing is not known in advance, so under kGradScheduleAuto each call is timed and, for the call's
// shapes and threads, the schedule with the lower median of its last kWindow times run, the other again once it
// has not run for kProbeEvery calls (the load may have changed); the first four calls alternate, the team first.
// (The median, not the last time: one call slowed down by another library's threads still spinning, as in the
// benchmark's mixed runs, would send the choice the wrong way for ten calls; not the least either, which took three
// slow calls to notice that another process had started.)
class ScheduleChooser {
 public:
  static constexpr int kProbeEvery = 10;  // calls of one schedule before the other is timed again
  static constexpr int kWindow = 3;       // a schedule's estimate: the median of its last kWindow times
  // true: run groups; for the call's key (shapes, itemsize, groups, threads)
  bool groups(const size_t (&key)[6]) {
    std::lock_guard<std::mutex> lock(m_);
    if (!std::equal(key, key + 6, key_)) {
      std::copy(key, key + 6, key_);
      for (int k = 0; k < 2; ++k) {
        count_[k] = since_[k] = 0;
        std::fill(times_[k], times_[k] + kWindow, 0.0);
      }
    }
    // the first calls alternate, team first, until each has two times (one slowed down by chance is outvoted)
    if (count_[0] < 2 || count_[1] < 2) return count_[1] < count_[0];
    const int faster = estimate(1) < estimate(0) ? 1 : 0, other = 1 - faster;
    return (since_[other] >= kProbeEvery ? other : faster) == 1;
  }
  void record(const size_t (&key)[6], bool groups, double seconds) {
    std::lock_guard<std::mutex> lock(m_);
    if (!std::equal(key, key + 6, key_)) return;
    const int k = groups ? 1 : 0;
    times_[k][count_[k] % kWindow] = seconds;
    ++count_[k];
    since_[k] = 0;
    ++since_[1 - k];
  }

 private:
  double estimate(int k) const {  // the median of the last three times (of two: the less)
    const int n = std::min(count_[k], kWindow);
    double t[kWindow];
    std::copy(times_[k], times_[k] + n, t);
    std::sort(t, t + n);
    return n == 3 ? t[1] : t[0];
  }
  std::mutex m_;
  size_t key_[6] = {};
  double times_[2][kWindow] = {};
  int count_[2] = {0, 0};
  int since_[2] = {0, 0};
};

ScheduleChooser& schedule_chooser() {
  static ScheduleChooser c;
  return c;
}

// set_grad_schedule; -1 until the first get_grad_schedule reads PYRGD_GRAD_SCHEDULE (auto, team or groups; another
// value or none: auto)
std::atomic<int> g_schedule{-1};
std::atomic<int> g_last_schedule{-1};           // what the last call ran (last_grad_schedule)

}  // namespace

void set_grad_schedule(int schedule) {
  if (schedule != kGradScheduleAuto && schedule != kGradScheduleTeam && schedule != kGradScheduleGroups)
    throw std::invalid_argument("grad schedule: expected 0 (auto), 1 (team) or 2 (groups), got " +
                                std::to_string(schedule));
  g_schedule.store(schedule, std::memory_order_relaxed);
}

int get_grad_schedule() {
  int v = g_schedule.load(std::memory_order_relaxed);
  if (v >= 0) return v;
  const char* e = std::getenv("PYRGD_GRAD_SCHEDULE");
  const std::string name = e ? e : "";
  v = name == "team" ? kGradScheduleTeam : name == "groups" ? kGradScheduleGroups : kGradScheduleAuto;
  int expected = -1;
  g_schedule.compare_exchange_strong(expected, v, std::memory_order_relaxed);  // a concurrent set wins
  return g_schedule.load(std::memory_order_relaxed);
}

int last_grad_schedule() { return g_last_schedule.load(std::memory_order_relaxed); }

// Elements of slack so that the layout can start at the first 64-byte boundary of any workspace of T (NumPy's large
// arrays start 16 bytes past one, and a vector that straddles two cache lines costs two accesses).
inline size_t align_slack(size_t itemsize) { return 64 / itemsize - 1; }

template <class T>
T* align64(T* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<T*>((a + 63) / 64 * 64);
}

size_t grad_workspace_elems(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t kept,
                            size_t threads) {
  return grad_layout(s, act, itemsize, panel_rows, kept, threads).total + align_slack(itemsize);
}

size_t grad_row_groups(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t kept) {
  return grad_layout(s, act, itemsize, panel_rows, kept, 1).groups;
}

size_t grad_lane_blocks(size_t n1) { return std::max<size_t>(1, ceil_div(ceil_div(n1, kBlock), kGradLanes)); }

namespace {
// A shard's lanes and groups, checked: std::invalid_argument naming what is wrong
void check_shard(const WideShape& s, size_t panel_rows, size_t lane_blocks, size_t groups) {
  if (panel_rows < 1 || panel_rows > s.N)
    throw std::invalid_argument("panel_rows: a shard needs the whole layer's panel rows, 1..N = " +
                                std::to_string(s.N) + ", got " + std::to_string(panel_rows));
  if (lane_blocks < 1) throw std::invalid_argument("lane_blocks: expected at least 1 (grad_lane_blocks)");
  const size_t lanes = ceil_div(ceil_div(s.n1, kBlock), lane_blocks);
  if (lanes > kGradLanes)
    throw std::invalid_argument("lane_blocks: " + std::to_string(lane_blocks) + " blocks a lane make " +
                                std::to_string(lanes) + " lanes of the shard's " + std::to_string(s.n1) +
                                " neurons; a layer has at most " + std::to_string(kGradLanes) +
                                " (grad_lane_blocks of the whole layer)");
  const size_t npanels = ceil_div(s.N, panel_rows);
  if (groups < 1 || groups > npanels)
    throw std::invalid_argument("groups: expected 1..panels = " + std::to_string(npanels) + ", got " +
                                std::to_string(groups));
}
}  // namespace

size_t grad_shard_workspace_elems(const WideShape& s, int act, size_t itemsize, size_t panel_rows, size_t lane_blocks,
                                  size_t groups) {
  check_shard(s, panel_rows, lane_blocks, groups);
  return grad_layout(s, act, itemsize, panel_rows, s.n1, 1, lane_blocks, groups).total + align_slack(itemsize);
}

namespace {

// network_grad, and with `shard` one rank's share of it (network_grad_shard): its own lanes, the whole layer's
// panels and groups, the panel's Z_2 from shard->combine.
template <class T>
double network_grad_impl(const WideShape& s, size_t nt, const size_t* tdims, const T* X, const T* Y, const T* W1,
                         const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2,
                         T* const* gWt, double* grad_sq, size_t panel_rows, size_t kept, T* work, size_t work_elems,
                         const GradShard<T>* shard) {
  if (!is_activation_code(act)) throw std::invalid_argument("act_code: unknown activation code " + std::to_string(act));
  const TileOps<T>& ops = active_tile_ops<T>();
  const size_t tr = size_t(ops.tile_rows);  // rows of a register tile: the products are split at multiples of it
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const size_t nthreads = size_t(std::max(1, get_num_threads()));
  // the schedule: groups of its own for each thread where the workspace has a slot per thread (grad_slots), else
  // the team on each panel; the same bits either way (the groups and lanes are fixed by the shapes)
  // (a call without a workspace allocates one slot: a one-off call, e.g. lr="auto"'s products, stays lean)
  // A shard: every neuron kept, the whole layer's lanes and groups, the team (combine is called in panel order).
  const size_t sh_bpl = shard ? shard->lane_blocks : 0, sh_groups = shard ? shard->groups : 0;
  if (shard) {
    check_shard(s, panel_rows, sh_bpl, sh_groups);
    if (!shard->combine) throw std::invalid_argument("combine: a shard needs the function that completes Z_2");
    kept = n1;
  }
  GradLayout L = grad_layout(s, act, sizeof(T), panel_rows, kept, work ? nthreads : 1, sh_bpl, sh_groups);
  const size_t need1 = grad_layout(s, act, sizeof(T), panel_rows, kept, 1, sh_bpl, sh_groups).total +
                       align_slack(sizeof(T));
  if (work && L.slots > 1 && work_elems < L.total + align_slack(sizeof(T)))
    L = grad_layout(s, act, sizeof(T), panel_rows, kept, 1);  // a workspace with one slot: the team schedule
  const size_t nblocks = L.nblocks, nbK = L.nbK, nbR = L.nbR, bpl = L.bpl, nlanes = L.nlanes, R = L.R;
  const size_t ngroups = L.groups, npanels = L.npanels;
  // the schedule (ScheduleChooser): the team where there is one slot or the team is asked for
  const int asked = get_grad_schedule();
  const size_t key[6] = {N, d, n1, n2, sizeof(T) * 1000 + ngroups, nthreads};
  const bool by_groups = L.slots > 1 && (asked == kGradScheduleGroups ||
                                         (asked == kGradScheduleAuto && schedule_chooser().groups(key)));
  const size_t nslots = by_groups ? L.slots : 1;
  const auto t_start = std::chrono::steady_clock::now();
  const T a1 = mult[0];
  const size_t nsub = ceil_div(R, kTailRows);  // the tail runs on sub-chunks of kTailRows rows of a panel
  const TailPlan<T> plan(nt, tdims, Wt, mult + 1, std::min(R, kTailRows));
  const size_t gsz = plan.grad_size(), nL = tdims[nt];
  const int P = by_groups ? int(nslots)
                          : int(std::max<size_t>(1, std::min<size_t>(nthreads, nbR ? nblocks : nlanes)));

  // The large arrays live in the caller's workspace (`work`, kept from call to call: no page faults and no
  // clearing per step), or in one allocated here; the small ones here. All outside the parallel region. The large
  // ones are not cleared (every value read is written first; the columns past n1 of the last block, which the
  // products never read but the activation epilogues pass over, are zeroed so that they hold finite values).
  const size_t need = L.total + align_slack(sizeof(T));
  std::unique_ptr<util::AlignedBuffer<T>> own;
  if (!work) {
    own.reset(new util::AlignedBuffer<T>(need, false));
    work = own->data();
  } else if (work_elems < need1) {
    throw std::invalid_argument("workspace: expected at least " + std::to_string(need1) + " elements, got " +
                                std::to_string(work_elems));
  }
  work = align64(work);  // every array of the layout starts on a cache line
  const bool relu = act == pyrgd::act::Relu::code;
  const size_t szPanel = checked_mul(nbK, R, kBlock);
  T* const W2Tp = work + L.w2t;
  T* const W1Bp = work + L.w1b;
  T* const G1Bp = work + L.g1b;
  T* const G1X = work + L.g1x;
  T* const G2X = work + L.g2x;
  T* const HR = work + L.hr;
  util::AlignedBuffer<T> Hgv(nbR ? checked_mul(size_t(P), kRecRows, n2) : 0);
  const size_t pbw = std::max(R, nbR ? kRecRows : 0) * kBlock;  // per thread: P (and S, D of the recomputed)
  util::AlignedBuffer<T> Pb(checked_mul(size_t(P), pbw * (nbR ? 3 : 1)));  // zero-filled: finite past column nb
  if (nbK == nblocks && n1 % kBlock)
    for (size_t k = 0; k < nslots; ++k)
      for (size_t j = 0; j < L.batch; ++j) {
        T* const SPk = work + L.sp + k * L.slot + j * szPanel;
        std::fill(SPk + (nblocks - 1) * R * kBlock, SPk + szPanel, T(0));
        T* const DPk = work + L.dp + k * L.slot + j * szPanel;
        if (!relu) std::fill(DPk + (nblocks - 1) * R * kBlock, DPk + szPanel, T(0));
      }
  util::AlignedBuffer<T> tbuf(checked_mul(size_t(P), plan.thread_buffer_size()));  // the tail's buffers, per thread
  util::AlignedBuffer<T> gsub(checked_mul(nslots, nsub, gsz));  // each slot's sub-chunks' tail gradients
  // per group: the loss and the tail's gradients (in double); per slot: its sub-chunks' losses
  std::vector<double> tacc(checked_mul(ngroups, gsz), 0.0), lossg(ngroups, 0.0), lsubv(nslots * nsub), q1(nblocks),
      q2(nblocks);
  // the lanes' claims in (A) and (B) (take_lane), all free before the first panel
  std::unique_ptr<std::atomic<size_t>[]> claimA(new std::atomic<size_t>[kGradLanes]),
      claimB(new std::atomic<size_t>[kGradLanes]);
  for (size_t li = 0; li < kGradLanes; ++li) {
    claimA[li].store(0, std::memory_order_relaxed);
    claimB[li].store(0, std::memory_order_relaxed);
  }
  std::atomic<size_t> next_group{0};  // the groups' claims (by_groups)
  std::atomic<bool> failed{false};    // a shard's combine threw (failure): the remaining panels are skipped
  std::exception_ptr failure;
  const util::CpuSet allowed;  // the CPUs this thread may run on: pin the groups' threads where P uses them all
  // (not where the user binds threads himself: OMP_PROC_BIND set)
  const bool pin_cpus = by_groups && allowed.count() == P && std::getenv("OMP_PROC_BIND") == nullptr;
  util::PanelBarrier panel_barrier;   // the panels' barriers (kernel_util.h: why not omp barrier), sized below
  T* const PB = Pb.data();
  double* const ta = tacc.data();
  double* const lg = lossg.data();
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
    size_t ranA[kShardBatch][kGradLanes], nranA[kShardBatch] = {};  // per panel of a batch
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
    // One panel, rows [r0, r0 + rows) (the p-th), of row group g into slot k's arrays; `first`: the group's first
    // panel (its accumulators start there). team: every thread of the team calls it and they share the lanes (with
    // barriers between the phases); else the calling thread runs all of it alone.
    // `j`: the panel's place in its slot's batch (a shard; else 0); `phases`: kPhaseA ((A) alone, a shard's batch
    // then meets the other ranks), kPhaseTB (the tail and (B)) or both
    const auto run_panel = [&](size_t p, size_t g, bool first, size_t k, bool team, size_t j, int phases) {
      if (failed.load(std::memory_order_relaxed)) return;  // set before a barrier every thread has passed
      const size_t r0 = p * R, rows = std::min(R, N - r0);
      const bool acc = !first;
      const T* const Xr = X + r0 * d;
      const size_t LS = L.batch * R * n2;  // from one lane's part of Z_2 to the next
      T* const SP = work + L.sp + k * L.slot + j * szPanel;
      T* const DP = relu ? nullptr : work + L.dp + k * L.slot + j * szPanel;
      T* const HL = work + L.hl + k * L.slot + j * R * n2;
      T* const F2p = work + L.f2 + k * L.slot + j * R * n2;
      T* const Gall = work + L.gb + k * L.slot + (nbR ? 0 : j * R * n2);
      size_t* const ran = ranA[j];
      size_t& nran = nranA[j];
      T* const Gp = nbR ? Gall + r0 * n2 : Gall;
      T* const gcs = gsub.data() + k * nsub * gsz;
      double* const lsub = lsubv.data() + k * nsub;
      T* const G1acc = g ? G1X + (g - 1) * nbK * d * kBlock : G1Bp;  // the group's accumulators
      T* const G2acc = g ? G2X + (g - 1) * L.nK * n2 : gW2;
      const size_t epoch = p + 1;
      // (A) per block: Z = X W1[:, T], S = a1 sigma(Z), D = a1 sigma'(Z); the lane's Z_2 += S W2[T, :]
      const auto lane_A = [&](size_t li) {
        const size_t b0 = li * bpl, b1 = std::min(nbK, b0 + bpl);
        T* const H = HL + li * LS;
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
      // (T) on sub-chunk si: Z_2 of its rows (the lanes in order), then the tail: G, loss, tail gradients
      const auto tail_sub = [&](size_t si) {
        const size_t rs = si * kTailRows;
        if (rs >= rows) return;
        const size_t rr = std::min(kTailRows, rows - rs), cnt = rr * n2;
        T* const f2 = F2p + rs * n2;
        // the recomputed neurons' part first (where there are some), then the lanes in order (a shard: combine
        // has written the whole Z_2 of the panel)
        if (!shard) {
          const T* const first_part = nbR ? HR + (r0 + rs) * n2 : HL + rs * n2;
          std::copy(first_part, first_part + cnt, f2);
          for (size_t l = nbR ? 0 : 1; l < nlanes; ++l) ops.add_into(cnt, f2, HL + l * LS + rs * n2);
        }
        lsub[si] = plan.run(ops, act, gamma, rr, f2, Y + (r0 + rs) * nL, Gp + rs * n2, gcs + si * gsz, tb);
      };
      // the panel's loss and tail gradients into the group's, in double, sub-chunk by sub-chunk in order
      const auto add_tail = [&]() {
        double* const tg = ta + g * gsz;
        for (size_t si = 0; si * kTailRows < rows; ++si) {
          lg[g] += lsub[si];
          const T* gs = gcs + si * gsz;
          for (size_t e = 0; e < gsz; ++e) tg[e] += double(gs[e]);
        }
      };
      // (B) per block: P = G W2[T, :]^T, D = P (.) D, dW2[T, :] (+)= S^T G, dW1[:, T] (+)= X^T D (the group's)
      const auto lane_B = [&](size_t li) {
        const size_t b0 = li * bpl, b1 = std::min(nbK, b0 + bpl);
        for (size_t blk = b1; blk-- > b0;) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          const T* const S = SP + blk * R * kBlock;
          const T* const D = relu ? nullptr : DP + blk * R * kBlock;
          const T* const W2Tb = W2Tp + blk * n2 * kBlock;
          T* const G2b = G2acc + t0 * n2;
          T* const G1b = G1acc + blk * d * kBlock;
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
      if (!team) {  // one thread, no barrier: the lanes in order, the tail, the lanes backwards (freshest S first)
        // (the schedule of whole groups: never a shard, so both phases)
        for (size_t li = 0; li < nlanes; ++li) lane_A(li);
        for (size_t si = 0; si < nsub; ++si) tail_sub(si);
        add_tail();
        for (size_t li = nlanes; li-- > 0;) lane_B(li);
        return;
      }
      // The team: each thread starts on its own contiguous range of lanes, front to back, then takes what the
      // others have not started, from the back of their ranges
      if (phases & kPhaseA) {
        nran = 0;
        for (size_t li = lane0; li < lane1; ++li)
          if (take_lane(claimA.get(), li, epoch)) {
            lane_A(li);
            ran[nran++] = li;
          }
        for (size_t o_ = 1; o_ < nth; ++o_) {
          const size_t o = (me + o_) % nth, o0 = o * nlanes / nth, o1 = (o + 1) * nlanes / nth;
          for (size_t li = o1; li-- > o0;)
            if (take_lane(claimA.get(), li, epoch)) {
              lane_A(li);
              ran[nran++] = li;
            }
        }
        panel_barrier.wait();
      }
      if (!(phases & kPhaseTB)) return;
#pragma omp for schedule(dynamic) nowait
      for (idx si = 0; si < idx(nsub); ++si) tail_sub(size_t(si));
      panel_barrier.wait();  // G of the panel is complete
#pragma omp single nowait
      add_tail();
      // (B): the lanes this thread ran in (A) in the reverse order, so that the S and D written last, still in
      // this core's cache, are read first, then any lane not yet started. A barrier after it: the next panel's (A)
      // rewrites S, D and G, and a block's gradients must take this panel's share before the next one's.
      for (size_t k2 = nran; k2-- > 0;)
        if (take_lane(claimB.get(), ran[k2], epoch)) lane_B(ran[k2]);
      for (size_t li = 0; li < nlanes; ++li)
        if (take_lane(claimB.get(), li, epoch)) lane_B(li);
      panel_barrier.wait();
    };
    if (by_groups) {  // each thread takes whole groups, each into its own slot, with no barrier until the last
      // a team that uses every CPU it may run on is pinned one thread per CPU for the groups (CpuPin)
      const util::CpuPin pin(pin_cpus ? allowed.cpu(int(me) % allowed.count()) : -1);
      for (size_t g; (g = next_group.fetch_add(1, std::memory_order_relaxed)) < ngroups;) {
        const size_t p0 = group_begin(g, ngroups, npanels), p1 = group_begin(g + 1, ngroups, npanels);
        for (size_t p = p0; p < p1; ++p) run_panel(p, g, p == p0, me, false, 0, kPhaseA | kPhaseTB);
      }
#pragma omp barrier
    } else if (!shard) {
      for (size_t g = 0; g < ngroups; ++g) {
        const size_t p0 = group_begin(g, ngroups, npanels), p1 = group_begin(g + 1, ngroups, npanels);
        for (size_t p = p0; p < p1; ++p) run_panel(p, g, p == p0, 0, true, 0, kPhaseA | kPhaseTB);
      }
    } else {  // a shard: per batch of panels of a group, (A) of each, one combine for the batch, the tail and (B)
      for (size_t g = 0; g < ngroups; ++g) {
        const size_t p0 = group_begin(g, ngroups, npanels), p1 = group_begin(g + 1, ngroups, npanels);
        for (size_t q0 = p0; q0 < p1; q0 += L.batch) {
          const size_t q1 = std::min(p1, q0 + L.batch);
          for (size_t p = q0; p < q1; ++p) run_panel(p, g, p == p0, 0, true, p - q0, kPhaseA);
          if (me == 0 && !failed.load(std::memory_order_relaxed)) {  // one thread meets the other ranks
            try {
              const size_t r0 = q0 * R;
              shard->combine(r0, std::min(N, q1 * R) - r0, work + L.hl, nlanes, L.batch * R * n2, work + L.f2);
            } catch (...) {
              failure = std::current_exception();
              failed.store(true, std::memory_order_relaxed);
            }
          }
          panel_barrier.wait();  // the batch's Z_2 is complete (or the call failed: every thread sees it here)
          for (size_t p = q0; p < q1; ++p) run_panel(p, g, p == p0, 0, true, p - q0, kPhaseTB);
        }
      }
    }
    // the recomputed neurons' gradients, per block (one thread each) and tile of rows: Z = X W1[:, T] again,
    // S = a1 sigma(Z), D = a1 sigma'(Z), P = G W2[T, :]^T (.) D, dW2[T, :] (+)= S^T G, dW1[:, T] (+)= X^T P
    if (nbR) {
      const T* const Gall = work + L.gb;
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
    // the groups' gradients added in group order (group 0's are G1B and gW2 themselves), then written out with
    // their squared norms, per block in double
#pragma omp for schedule(dynamic)
    for (idx bi = 0; bi < idx(nblocks); ++bi) {
      const size_t t0 = size_t(bi) * kBlock, nb = std::min(kBlock, n1 - t0);
      double a = 0.0, c = 0.0;
      T* const gb = G1Bp + size_t(bi) * d * kBlock;
      for (size_t gi = 1; gi < ngroups; ++gi) {  // group by group: each element's sum in group order
        const T* const xb = G1X + ((gi - 1) * nbK + size_t(bi)) * d * kBlock;
        for (size_t k = 0; k < d; ++k) ops.add_into(nb, gb + k * kBlock, xb + k * kBlock);
        ops.add_into(nb * n2, gW2 + t0 * n2, G2X + (gi - 1) * L.nK * n2 + t0 * n2);
      }
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
  if (failure) std::rethrow_exception(failure);
  if (shard && shard->block_sq) {
    std::copy(q1p, q1p + nblocks, shard->block_sq);
    std::copy(q2p, q2p + nblocks, shard->block_sq + nblocks);
  }
  double t1 = 0.0, t2 = 0.0, loss = 0.0;
  for (size_t blk = 0; blk < nblocks; ++blk) {
    t1 += q1p[blk];
    t2 += q2p[blk];
  }
  for (size_t g = 0; g < ngroups; ++g) loss += lg[g];
  if (L.slots > 1 && asked == kGradScheduleAuto)
    schedule_chooser().record(key, by_groups,
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
  g_last_schedule.store(by_groups ? kGradScheduleGroups : kGradScheduleTeam, std::memory_order_relaxed);
  grad_sq[0] = t1;
  grad_sq[1] = t2;
  for (size_t j = 0; j < nt; ++j) {
    double sq = 0.0;
    for (size_t e = 0; e < plan.grad_count(j); ++e) {
      const size_t o = plan.grad_offset(j) + e;
      double v = ta[o];
      for (size_t g = 1; g < ngroups; ++g) v += ta[g * gsz + o];
      const T gv = T(v);
      gWt[j][e] = gv;
      sq += double(gv) * double(gv);
    }
    grad_sq[2 + j] = sq;
  }
  return loss;
}

}  // namespace

template <class T>
double network_grad(const WideShape& s, size_t nt, const size_t* tdims, const T* X, const T* Y, const T* W1,
                    const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2, T* const* gWt,
                    double* grad_sq, size_t panel_rows, size_t kept, T* work, size_t work_elems) {
  return network_grad_impl<T>(s, nt, tdims, X, Y, W1, W2, Wt, mult, act, gamma, gW1, gW2, gWt, grad_sq, panel_rows,
                              kept, work, work_elems, nullptr);
}

template <class T>
double network_grad_shard(const WideShape& s, size_t nt, const size_t* tdims, const T* X, const T* Y, const T* W1,
                          const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2,
                          T* const* gWt, double* grad_sq, size_t panel_rows, const GradShard<T>& shard, T* work,
                          size_t work_elems) {
  return network_grad_impl<T>(s, nt, tdims, X, Y, W1, W2, Wt, mult, act, gamma, gW1, gW2, gWt, grad_sq, panel_rows,
                              s.n1, work, work_elems, &shard);
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
template double network_grad_shard<float>(const WideShape&, size_t, const size_t*, const float*, const float*,
                                          const float*, const float*, const float* const*, const float*, int, float,
                                          float*, float*, float* const*, double*, size_t, const GradShard<float>&,
                                          float*, size_t);
template double network_grad_shard<double>(const WideShape&, size_t, const size_t*, const double*, const double*,
                                           const double*, const double*, const double* const*, const double*, int,
                                           double, double*, double*, double* const*, double*, size_t,
                                           const GradShard<double>&, double*, size_t);

}  // namespace cpu
}  // namespace pyrgd

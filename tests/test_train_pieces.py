"""The pieces pyrgd.train is made of, each on its own: the stop rules, the per-step history, the certificate tracker
and its envelope, the Ctrl-C flag."""
import math
import os
import signal
import threading

import numpy as np
import pytest

from pyrgd.activations import parse_activation
from pyrgd.history import History
from pyrgd.interrupt import StopFlag
from pyrgd.stop_rules import STATUSES, StopRules
from pyrgd.tracker import Tracker
from pyrgd.tracking import certificate


# ------------------------------------------------------------------------------------------------ stop rules
def test_stop_rules_in_their_order():
    r = StopRules(steps=10, tol=1e-3, rel_tol=1e-2, divergence_factor=100.0, time_budget=5.0)
    assert r.check(3, 0.5, 1.0) is None
    assert r.check(3, float("nan"), 1.0)[0] == "diverged"
    assert r.check(3, float("inf"), 1.0)[0] == "diverged"
    st, msg = r.check(3, 101.0, 1.0)
    assert st == "diverged" and "1.010e+02 at step 3" in msg and "smaller lr" in msg
    assert r.check(3, 100.0, 1.0) is None  # not above the factor
    assert r.check(3, 1e-3, 1.0)[0] == "converged"  # tol
    assert r.check(3, 0.009, 1.0)[0] == "converged"  # rel_tol
    assert r.check(10, 0.5, 1.0) == ("max_steps", "reached the step budget of 10 steps")
    assert r.check(10, 1e-4, 1.0)[0] == "converged"  # converged wins over the step budget
    assert r.check(4, 0.5, 1.0, interrupted=True) == ("interrupted", "interrupted (Ctrl-C) after 4 steps")
    assert r.check(4, 0.5, 1.0, elapsed=5.1)[0] == "time_budget"
    assert r.check(4, 0.5, 1.0, elapsed=4.9) is None
    assert StopRules(steps=10).check(4, 0.5, 1.0, elapsed=1e9) is None  # no budget
    assert r.check(4, 0.5, 1.0, interrupted="SIGTERM") == ("terminated", "terminated (SIGTERM) after 4 steps")
    assert r.check(4, 0.5, 1.0, interrupted="SIGINT")[0] == "interrupted"
    assert {"converged", "max_steps", "diverged", "time_budget", "interrupted", "terminated",
            "stopped_by_callback"} == set(STATUSES)


def test_stop_rules_zero_start_loss():
    """Phi_0 = 0 (targets already fitted): converged at step 0 with tol = 0, and the message has no division."""
    st, msg = StopRules(steps=5).check(0, 0.0, 0.0)
    assert st == "converged" and "0.00e+00 of its start" in msg


# --------------------------------------------------------------------------------------------------- history
def test_history_rows_and_factors():
    h = History(3)
    assert math.isnan(h.add(0, 4.0, 0.1, 4.0))
    h.add_grad_sq([4.0, 9.0, 16.0])
    assert h.add(1, 2.0, 0.2, 3.0) == 0.5
    h.close()
    c = h.columns
    assert c["step"] == [0, 1] and c["loss"] == [4.0, 2.0] and c["time"] == [0.1, 0.2]
    assert c["grad_norm_1"][0] == 2.0 and c["grad_norm_3"][0] == 4.0 and math.isnan(c["grad_norm_2"][1])
    assert len({len(v) for v in c.values()}) == 1
    h.set_envelope(7.0)
    assert c["envelope"] == [4.0, 7.0]


def test_history_factor_after_a_zero_loss_is_nan():
    h = History(2)
    h.add(0, 0.0, 0.0, 0.0)
    assert math.isnan(h.add(1, 0.0, 0.0, 0.0))


def test_history_repair_after_an_interruption_mid_row():
    """An interruption can leave a row half written (step appended, loss not yet) or a row without its gradient
    norms: repair keeps the complete rows and pads the norms with nan."""
    h = History(2)
    h.add(0, 1.0, 0.0, 1.0)
    h.add_grad_sq([1.0, 1.0])
    h.add(1, 0.5, 0.0, 1.0)
    h.columns["step"].append(2)  # half a row
    h.repair()
    assert len({len(v) for v in h.columns.values()}) == 1 and len(h) == 2
    assert math.isnan(h.columns["grad_norm_2"][1])
    h.columns["step"].append(2)  # step and loss appended, not the factor (a signal inside add)
    h.columns["loss"].append(0.25)
    h.repair()
    assert len({len(v) for v in h.columns.values()}) == 1 and len(h) == 2 and h.columns["loss"][-1] == 0.5


def test_tracker_repair_cuts_a_half_recorded_row():
    X, W = _small_net()
    t = Tracker(X, W, [w.copy() for w in W], parse_activation("tanh"), [1.0, 1.0], 1e-3, "cpu", every=1)
    t.record(0, 1.0)
    t.record(1, 0.9)
    first = next(iter(t.columns))
    t.columns[first].append(2)  # the first column of step 2's row, then the interruption
    t.repair()
    assert len({len(v) for v in t.columns.values()}) == 1 and t.columns["step"] == [0, 1]


# --------------------------------------------------------------------------------------------------- tracker
def _small_net(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((12, 3))
    W = [rng.standard_normal((3, 40)) / 3 ** 0.5, rng.standard_normal((40, 4)) / 40 ** 0.5,
         rng.standard_normal((4, 1)) / 2]
    return X, W


def test_tracker_records_certificates_and_the_envelope():
    X, W = _small_net()
    act = parse_activation("smooth_leaky_relu(0.2)")
    W0 = [w.copy() for w in W]
    t = Tracker(X, W, W0, act, [1.0, 1.0], 1e-3, "cpu", every=2)
    assert [k for k in range(6) if t.due(k, 1.0)] == [0, 2, 4]
    assert not t.due(2, float("nan"))
    t.start(10.0)
    row = t.record(0)
    want = certificate(X, W, W0, act, [1.0, 1.0], 1e-3, "cpu")
    assert row["certified_factor"] == want["certified_factor"] and 0 < row["certified_factor"] < 1
    assert t.columns["step"] == [0] and math.isnan(t.columns["observed_factor"][0])
    assert t.envelope == 10.0
    assert t.advance() == 10.0 * row["certified_factor"]
    t.observe(1, 0.9)
    assert t.columns["observed_factor"] == [0.9]
    t.observe(3, 0.8)  # no certificate at step 2: nothing to fill
    assert t.columns["observed_factor"] == [0.9]
    assert t.seconds > 0
    assert not Tracker(X, W, W0, act, [1.0, 1.0], 1e-3, "cpu", every=0).due(0, 1.0)


def test_tracker_envelope_unknown_without_a_certified_factor():
    """ReLU with a tail (L = 3) has no lower bound gamma of sigma', so no PL factor is certified: the envelope is
    nan from step 0."""
    X, W = _small_net(1)
    act = parse_activation("relu")
    t = Tracker(X, W, [w.copy() for w in W], act, [1.0, 1.0], 1e-3, "cpu", every=1)
    t.start(3.0)
    t.record(0)
    assert math.isnan(t.certified) and math.isnan(t.envelope)


# ---------------------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.skipif(os.name != "posix", reason="signal delivery through os.kill needs POSIX")
def test_stop_flag_first_sigint_sets_second_raises():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        assert not stop.set
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.set and stop.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.skipif(os.name != "posix", reason="signal delivery through os.kill needs POSIX")
def test_stop_flag_holds_a_second_signal_inside_a_critical_block():
    """A second signal inside critical() raises when the block ends, so the block runs whole; with hold=True it is
    dropped."""
    done = []
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            with stop.critical():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("rest of the block")
        assert done == ["rest of the block"]
        with stop.critical(hold=True):
            os.kill(os.getpid(), signal.SIGINT)
            done.append("written")
    assert done == ["rest of the block", "written"]


def test_stop_flag_outside_the_main_thread_changes_nothing():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def run():
        with StopFlag():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [before]

"""PyramidalNet.load on hostile files: headers checked before anything is allocated, every failure a PyrgdError,
non-finite weights refused unless asked."""
import json
import random
import tracemalloc
import zipfile

import numpy as np
import pytest

from pyrgd import PyramidalNet, PyrgdError


@pytest.fixture
def saved(tmp_path):
    net = PyramidalNet(4, [64, 8, 1], seed=1, activation="tanh", dtype="float32")
    path = tmp_path / "w.npz"
    net.save(path)
    return net, path


def test_round_trip(saved):
    net, path = saved
    back = PyramidalNet.load(path)
    assert back.config() == net.config()
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(net.weights, back.weights))


def _rewrite_meta(src, dst, **changes):
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    import io

    meta = json.loads(str(np.load(io.BytesIO(files["__meta__.npy"]))))
    meta.update(changes)
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    files["__meta__.npy"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)


def test_a_small_file_claiming_huge_widths_allocates_nothing(saved, tmp_path):
    _, path = saved
    liar = tmp_path / "liar.npz"
    _rewrite_meta(path, liar, widths=[250000, 1])
    tracemalloc.start()
    with pytest.raises(PyrgdError, match=r"W1 in .* has shape \(4, 64\) float32, expected \(4, 250000\)"):
        PyramidalNet.load(liar)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_malformed_configuration(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.npz"
    _rewrite_meta(path, bad, widths="many")
    with pytest.raises(PyrgdError, match="malformed configuration"):
        PyramidalNet.load(bad)
    _rewrite_meta(path, bad, format="other")
    with pytest.raises(PyrgdError, match="not a pyrgd weights file"):
        PyramidalNet.load(bad)


def test_truncated_and_bit_flipped_files_raise_pyrgd_errors(saved, tmp_path):
    """Each of 200 damaged copies either raises a PyrgdError or, where the flipped bits lie in the zip's bookkeeping
    that nothing reads (a time stamp), loads the very same network."""
    net, path = saved
    data = path.read_bytes()
    rng = random.Random(7)
    for t in range(200):
        b = bytearray(data)
        if t % 2:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        q = tmp_path / "b.npz"
        q.write_bytes(bytes(b))
        try:
            back = PyramidalNet.load(q)
        except PyrgdError as e:
            assert str(e).startswith("path: ")
            continue
        assert back.config() == net.config() and all(np.array_equal(a, c) for a, c in zip(net.weights, back.weights))
    with pytest.raises(PyrgdError, match="path: no file"):
        PyramidalNet.load(tmp_path / "missing.npz")


def test_non_finite_weights_are_refused_unless_asked(tmp_path):
    net = PyramidalNet(3, [16, 2, 1], seed=0)
    net.weights[1][0, 0] = np.nan
    net.save(tmp_path / "nan.npz")
    with pytest.raises(PyrgdError, match="W2 in .* contains NaN or infinite values"):
        PyramidalNet.load(tmp_path / "nan.npz")
    back = PyramidalNet.load(tmp_path / "nan.npz", allow_nonfinite=True)
    assert np.isnan(back.weights[1][0, 0])


@pytest.mark.parametrize("kw,match", [({"seed": 1.7}, "seed: expected None or a non-negative integer"),
                                      ({"seed": True}, "seed: expected None"), ({"seed": -1}, "seed: expected None"),
                                      ({"allow_non_pyramidal": "no"}, "allow_non_pyramidal: expected True or False"),
                                      ({"dtype": object()}, "dtype: expected 'float32' or 'float64'"),
                                      ({"dtype": "int32"}, "dtype: expected")])
def test_strict_argument_types(kw, match):
    with pytest.raises(PyrgdError, match=match):
        PyramidalNet(3, [16, 2, 1], **kw)
    assert PyramidalNet(3, [16, 2, 1], seed=np.int64(3)).seed == 3

"""pyrgd.config: schema and defaults, presets, precedence, TOML round trip, validation errors, build()."""
import numpy as np
import pytest

from pyrgd import config as C
from pyrgd.errors import PyrgdError
from pyrgd.model import PyramidalNet


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------- defaults, presets
def test_defaults_cover_the_schema_and_are_fresh_copies():
    cfg = C.resolve_config()
    assert list(cfg) == ["data", "model", "train"]
    for t in C.TABLES:
        assert set(cfg[t]) == set(C.SCHEMA[t])
    cfg["model"]["widths"].append(7)
    assert C.resolve_config()["model"]["widths"] == [1024, 16, 1]


def test_default_train_values_match_the_train_signature():
    t = C.resolve_config()["train"]
    kw = C.train_kwargs(C.resolve_config())
    assert t["lr"] == "auto" and kw["time_budget"] is None  # time_budget = 0 means none
    assert t["backend"] == "auto"


@pytest.mark.parametrize("name", sorted(C.PRESETS))
def test_every_preset_resolves_and_builds(name):
    cfg = C.resolve_config(preset=name)
    net, X, Y, kw = C.build(cfg)
    assert isinstance(net, PyramidalNet)
    assert X.shape[1] == net.d and Y.shape[1] == net.widths[-1]


def test_quickstart_preset_keeps_its_promise():
    """The README's promise: the quickstart trains a wide-first-layer pyramidal net in float64 to 1e-8 of the start."""
    import pyrgd

    cfg = C.resolve_config(preset="quickstart")
    net, X, Y, kw = C.build(cfg)
    assert net.widths[0] >= X.shape[0] and net.dtype == np.float64
    assert all(a >= b for a, b in zip(net.widths[1:], net.widths[2:]))
    r = pyrgd.train(net, X, Y, progress=False, **kw)
    assert r.status == "converged", r.message
    assert r.history["loss"][-1] <= 1e-8 * r.history["loss"][0]
    assert np.isfinite(r.history["envelope"]).all()  # the PL certificate is available along the whole run


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(PyrgdError, match=r"^preset: unknown preset 'nope'; valid presets are: quickstart"):
        C.resolve_config(preset="nope")


# --------------------------------------------------------------------------------------------- precedence
def test_precedence_defaults_preset_file_overrides(tmp_path):
    file_cfg = C.load_config(_write(tmp_path, "[train]\nsteps = 300\ntol = 0.5\n[model]\nseed = 4\n"))
    assert C.resolve_config()["train"]["steps"] == 1000  # default
    assert C.resolve_config(preset="quickstart")["train"]["steps"] == 20000  # preset over default
    cfg = C.resolve_config(preset="quickstart", file_cfg=file_cfg)
    assert cfg["train"]["steps"] == 300 and cfg["train"]["tol"] == 0.5  # file over preset
    assert cfg["train"]["rel_tol"] == 1e-9  # preset value the file did not touch
    cfg = C.resolve_config(preset="quickstart", file_cfg=file_cfg, overrides={"train": {"steps": 7}})
    assert cfg["train"]["steps"] == 7 and cfg["train"]["tol"] == 0.5 and cfg["model"]["seed"] == 4


def test_dotted_overrides():
    cfg = C.resolve_config(overrides={"train.steps": 9, "model.widths": [32, 1]})
    assert cfg["train"]["steps"] == 9 and cfg["model"]["widths"] == [32, 1]


def test_values_are_normalized():
    cfg = C.resolve_config(overrides={"train": {"lr": 1, "tol": 0, "steps": 2e3},
                                      "model": {"activation": "LEAKY_RELU", "multipliers": [1, 2]}})
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert isinstance(cfg["train"]["tol"], float)
    assert cfg["train"]["steps"] == 2000 and isinstance(cfg["train"]["steps"], int)
    assert cfg["model"]["activation"] == "leaky_relu(0.01)"
    assert cfg["model"]["multipliers"] == [1.0, 2.0]


# --------------------------------------------------------------------------------------------- TOML round trip
def _everything_changed():
    return C.resolve_config(overrides={
        "data": {"source": "synthetic", "N": 5, "d": 3, "n_out": 2, "inputs": "gaussian", "targets": "teacher",
                 "seed": 11, "teacher_width": 8, "teacher_activation": "relu", "path": "a b/\"q\".npz",
                 "y_path": "ü.npy", "x_key": "inp", "y_key": "out"},
        "model": {"widths": [40, 6, 2], "activation": "leaky_relu(0.1)", "init": "normal",
                  "init_std": [0.5, 0.25, 1e-3], "beta": 2.5, "zero_layer": 2, "seed": 3, "dtype": "float32",
                  "multipliers": [1.5, 0.5], "allow_non_pyramidal": True},
        "train": {"lr": 0.125, "steps": 77, "tol": 1e-12, "rel_tol": 3e-7, "track_every": 5, "time_budget": 2.5,
                  "divergence_factor": 1e3, "backend": "reference"},
    })


@pytest.mark.parametrize("make", [C.resolve_config, lambda: C.resolve_config(preset="quickstart"),
                                  _everything_changed])
def test_dump_then_load_gives_the_same_dict(tmp_path, make):
    cfg = make()
    p = _write(tmp_path, C.dump_config(cfg))
    assert C.load_config(p) == cfg
    assert C.resolve_config(file_cfg=C.load_config(p)) == cfg


def test_dump_of_a_partial_config_and_of_a_float_init_std(tmp_path):
    part = {"train": {"steps": 5}, "model": {"init_std": 0.3}}
    assert C.load_config(_write(tmp_path, C.dump_config(part))) == part


def test_load_returns_only_the_keys_of_the_file(tmp_path):
    assert C.load_config(_write(tmp_path, "[train]\nsteps = 12\n")) == {"train": {"steps": 12}}
    assert C.load_config(_write(tmp_path, "# nothing\n")) == {}


def test_dump_rejects_an_invalid_config():
    with pytest.raises(PyrgdError, match=r"^train\.steps: "):
        C.dump_config({"train": {"steps": -1}})


# --------------------------------------------------------------------------------------------- validation errors
def test_unknown_key_names_it_and_lists_the_valid_ones(tmp_path):
    p = _write(tmp_path, "[train]\nstepz = 3\n")
    with pytest.raises(PyrgdError) as e:
        C.load_config(p)
    msg = str(e.value)
    assert msg.startswith("train.stepz: unknown key; valid keys of [train] are: lr, steps, tol")
    assert str(p) in msg


def test_unknown_table(tmp_path):
    with pytest.raises(PyrgdError, match=r"unknown table \[trian\]; valid tables are: data, model, train"):
        C.load_config(_write(tmp_path, "[trian]\nsteps = 3\n"))


def test_key_outside_a_table_says_where_it_belongs(tmp_path):
    with pytest.raises(PyrgdError, match=r"key 'steps' is outside any table; it belongs in \[train\]"):
        C.load_config(_write(tmp_path, "steps = 3\n"))


def test_table_given_a_value(tmp_path):
    with pytest.raises(PyrgdError, match=r"\[train\] must be a table"):
        C.resolve_config(overrides={"train": 3})


@pytest.mark.parametrize("over, pattern", [
    ({"train": {"steps": "ten"}}, r"^train\.steps: expected an integer >= 1, got 'ten'"),
    ({"train": {"steps": True}}, r"^train\.steps: expected an integer"),
    ({"train": {"steps": 2.5}}, r"^train\.steps: expected an integer"),
    ({"train": {"steps": 0}}, r"^train\.steps: expected an integer >= 1, got 0"),
    ({"train": {"tol": -1.0}}, r"^train\.tol: expected a finite number >= 0"),
    ({"train": {"tol": float("nan")}}, r"^train\.tol: expected a finite number"),
    ({"train": {"lr": "fast"}}, r"^train\.lr: expected \"auto\" or a positive number"),
    ({"train": {"lr": 0}}, r"^train\.lr: expected \"auto\" or a number > 0"),
    ({"train": {"backend": "gpu"}}, r"^train\.backend: expected one of auto, cpu, reference, cuda"),
    ({"train": {"divergence_factor": 1.0}}, r"^train\.divergence_factor: expected a finite number > 1"),
    ({"model": {"widths": 1024}}, r"^model\.widths: expected a list of integers"),
    ({"model": {"widths": [64, "a"]}}, r"^model\.widths\[1\]: expected an integer"),
    ({"model": {"widths": [64, 0]}}, r"^model\.widths\[1\]: expected an integer >= 1"),
    ({"model": {"activation": "swish"}}, r"^model\.activation: unknown activation 'swish'"),
    ({"model": {"activation": 3}}, r"^model\.activation: expected an activation name"),
    ({"model": {"init": "orthogonal"}}, r"^model\.init: expected one of lecun, he"),
    ({"model": {"dtype": "float16"}}, r"^model\.dtype: expected one of float32, float64"),
    ({"model": {"allow_non_pyramidal": "yes"}}, r"^model\.allow_non_pyramidal: expected true or false"),
    ({"model": {"multipliers": [1.0, -1.0]}}, r"^model\.multipliers\[1\]: expected a number > 0"),
    ({"model": {"init_std": "big"}}, r"^model\.init_std: expected a number or a list"),
    ({"data": {"source": "s3"}}, r"^data\.source: expected one of synthetic, digits, file"),
    ({"data": {"path": 3}}, r"^data\.path: expected a string"),
])
def test_type_errors_name_the_key(over, pattern):
    with pytest.raises(PyrgdError, match=pattern):
        C.resolve_config(overrides=over)


def test_wrong_type_in_a_file_names_key_and_path(tmp_path):
    p = _write(tmp_path, '[model]\nwidths = "1024,16,1"\n')
    with pytest.raises(PyrgdError, match=r"^model\.widths: expected a list of integers.*\(in .*c\.toml\)"):
        C.load_config(p)


def test_toml_syntax_error_names_path_and_line(tmp_path):
    p = _write(tmp_path, "[train]\nsteps = 3\nlr = = 2\n")
    with pytest.raises(PyrgdError) as e:
        C.load_config(p)
    assert "TOML syntax error" in str(e.value) and str(p) in str(e.value) and "line 3" in str(e.value)


def test_missing_file_folder_and_bad_encoding(tmp_path):
    with pytest.raises(PyrgdError, match=r"^config: file not found: .*missing\.toml"):
        C.load_config(tmp_path / "missing.toml")
    with pytest.raises(PyrgdError, match=r"^config: .* is a folder"):
        C.load_config(tmp_path)
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[data]\npath = "\xe9"\n')
    with pytest.raises(PyrgdError, match=r"^config: "):
        C.load_config(p)
    with pytest.raises(PyrgdError, match=r"^config: expected the path"):
        C.load_config(None)


def test_file_config_must_be_a_dict():
    with pytest.raises(PyrgdError, match=r"^config: expected a dict"):
        C.resolve_config(file_cfg=[1, 2])


# --------------------------------------------------------------------------------------------- command-line values
@pytest.mark.parametrize("table, key, text, value", [
    ("model", "widths", "1024,16,1", [1024, 16, 1]),
    ("model", "widths", "[64, 8, 1]", [64, 8, 1]),
    ("model", "multipliers", "", []),
    ("model", "init_std", "0.5", 0.5),
    ("model", "init_std", "0.5,0.25", [0.5, 0.25]),
    ("model", "activation", "relu", "relu"),
    ("model", "activation", '"tanh"', "tanh"),
    ("model", "allow_non_pyramidal", "yes", True),
    ("model", "allow_non_pyramidal", "false", False),
    ("train", "lr", "auto", "auto"),
    ("train", "lr", "0.01", 0.01),
    ("train", "steps", "2e4", 20000),
    ("train", "rel_tol", "1e-9", 1e-9),
    ("data", "path", "x y.npz", "x y.npz"),
])
def test_coerce_value(table, key, text, value):
    got = C.coerce_value(table, key, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item, pattern", [
    ("train.steps", r"^--set: expected table\.key=value"),
    ("steps=3", r"^--set: expected table\.key=value"),
    ("a.b.c=3", r"^--set: expected table\.key=value"),
    ("trian.steps=3", r"^--set: unknown table \[trian\]"),
    ("train.stepz=3", r"^train\.stepz: unknown key"),
    ("train.steps=x", r"^train\.steps: expected an integer, got 'x'"),
    ("model.widths=64,x", r"^model\.widths: expected an integer"),
    ("model.allow_non_pyramidal=maybe", r"^model\.allow_non_pyramidal: expected true or false"),
])
def test_parse_assignment_errors(item, pattern):
    with pytest.raises(PyrgdError, match=pattern):
        C.parse_assignment(item)


def test_parse_assignment():
    assert C.parse_assignment("train.steps=500") == ("train", "steps", 500)
    assert C.parse_assignment(" data.path = a=b.npz") == ("data", "path", "a=b.npz")


# --------------------------------------------------------------------------------------------- build
def test_build_takes_d_from_the_data_and_maps_train_kwargs():
    cfg = C.resolve_config(overrides={
        "data": {"N": 10, "d": 5, "n_out": 2}, "model": {"widths": [32, 4, 2], "seed": 3, "dtype": "float32"},
        "train": {"lr": 0.1, "steps": 9, "time_budget": 4.0, "backend": "reference", "threads": 3,
                  "method": "neurons"}})
    net, X, Y, kw = C.build(cfg)
    assert net.d == 5 and net.widths == [32, 4, 2] and net.dtype == np.float32 and net.seed == 3
    assert X.shape == (10, 5) and X.dtype == np.float32 and Y.shape == (10, 2)
    assert kw == {"lr": 0.1, "steps": 9, "tol": 0.0, "rel_tol": 0.0, "track_every": "auto", "track_route": "auto",
                  "checkpoint_every": "auto",
                  "time_budget": 4.0, "divergence_factor": 1e6, "backend": "reference", "threads": 3,
                  "method": "neurons", "update": "gd"}
    assert C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [8, 1]}})[3]["threads"] is None  # 0: as it is
    np.testing.assert_array_equal(net.weights[0], PyramidalNet(5, [32, 4, 2], activation=net.activation, seed=3,
                                                               dtype="float32").weights[0])


def test_build_accepts_a_partial_config():
    net, X, Y, kw = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [8, 1]}})
    assert net.widths == [8, 1] and X.shape == (4, 2) and kw["steps"] == 1000


def test_build_digits_has_d_64():
    pytest.importorskip("sklearn")
    net, X, Y, _ = C.build({"data": {"source": "digits", "N": 20, "n_out": 10}, "model": {"widths": [64, 10]}})
    assert net.d == 64 and Y.shape == (20, 10)


def test_build_checks_n_out_against_the_last_width():
    with pytest.raises(PyrgdError, match=r"^model\.widths: the last width n_L = 1 must equal the number of target "
                                         r"columns of the data \(3\)"):
        C.build({"data": {"N": 4, "d": 2, "n_out": 3}, "model": {"widths": [8, 4, 1]}})


def test_build_pyramidal_check_and_its_escape():
    with pytest.raises(PyrgdError, match=r"^model\.widths: the tail .* must be pyramidal"):
        C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 2, 4, 1]}})
    net, *_ = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 2, 4, 1], "allow_non_pyramidal": True}})
    assert net.widths == [16, 2, 4, 1]


def test_build_model_options_reach_the_net():
    net, *_ = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 4, 1], "init": "zero_scaled",
                                                            "zero_layer": 2, "beta": 3.0}})
    assert not net.weights[1].any() and net.weights[0].any() and net.weights[2].any()
    net, *_ = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 4, 1], "init": "zero_scaled"}})
    assert not net.weights[2].any()  # zero_layer = 0: the last layer
    net, *_ = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 1], "init": "normal", "init_std": 0.0}})
    assert not net.weights[0].any()
    net, *_ = C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 4, 1], "multipliers": [2.0, 0.5]}})
    assert net.multipliers == [2.0, 0.5]


def test_build_bad_multipliers_name_the_model_key():
    with pytest.raises(PyrgdError, match=r"^model\.multipliers: expected 2 values"):
        C.build({"data": {"N": 4, "d": 2}, "model": {"widths": [16, 4, 1], "multipliers": [1.0]}})


# --------------------------------------------------------------------------------------------- pyrgd.schema
def test_config_and_data_share_the_schema_objects():
    """pyrgd.config re-exports pyrgd.schema (the same objects: a preset added to one is seen by the other), and the
    [data] vocabularies that pyrgd.data checks its arguments against are the schema's choices."""
    from pyrgd import data, schema

    for name in ("SCHEMA", "PRESETS", "TABLES", "BACKEND_NAMES", "Key", "defaults", "resolve_config"):
        assert getattr(C, name) is getattr(schema, name), name
    for name in ("INPUT_KINDS", "TARGET_KINDS", "SOURCES"):
        assert getattr(data, name) is getattr(schema, name), name
    assert C.SCHEMA["data"]["inputs"].choices == data.INPUT_KINDS == ("sphere", "gaussian")
    assert C.SCHEMA["data"]["targets"].choices == data.TARGET_KINDS == ("gaussian", "teacher")
    assert C.SCHEMA["data"]["source"].choices == data.SOURCES == ("synthetic", "digits", "file")
    for inputs in data.INPUT_KINDS:  # every value the schema accepts, the data module makes
        for targets in data.TARGET_KINDS:
            X, Y = data.make_dataset({"N": 3, "d": 2, "inputs": inputs, "targets": targets})
            assert X.shape == (3, 2) and Y.shape == (3, 1)


def test_schema_resolves_without_config_or_data(tmp_path):
    """pyrgd.schema stands alone: importing it loads neither pyrgd.config nor pyrgd.data, and it resolves and
    checks a config by itself."""
    import subprocess
    import sys

    code = ("import sys\nfrom pyrgd import schema\n"
            "cfg = schema.resolve_config(preset='quickstart', overrides={'train.steps': 2e3})\n"
            "assert cfg['train']['steps'] == 2000 and cfg['data']['N'] == 128, cfg\n"
            "try:\n    schema.resolve_config(overrides={'data': {'inputs': 'cube'}})\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "print(sorted(m for m in sys.modules if m in ('pyrgd.config', 'pyrgd.data')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(tmp_path)).stdout.splitlines()
    assert out == ["PyrgdError data.inputs: expected one of sphere, gaussian, got 'cube'", "[]"]


def test_track_every_takes_auto_zero_or_a_count():
    assert C.resolve_config()["train"]["track_every"] == "auto"
    assert C.resolve_config(overrides={"train": {"track_every": 0}})["train"]["track_every"] == 0
    assert C.coerce_value("train", "track_every", "auto") == "auto"
    assert C.coerce_value("train", "track_every", "25") == 25
    with pytest.raises(PyrgdError, match="train.track_every: expected \"auto\" or an integer >= 0"):
        C.resolve_config(overrides={"train": {"track_every": "often"}})
    with pytest.raises(PyrgdError, match="train.track_every"):
        C.resolve_config(overrides={"train": {"track_every": -1}})
    with pytest.raises(PyrgdError, match="train.track_route: expected one of auto, exact, certified, estimate"):
        C.resolve_config(overrides={"train": {"track_route": "fast"}})

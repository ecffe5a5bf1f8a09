"""Config files (configs/*.toml) and --set overrides: jaxcloak.configs.files. No models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jaxcloak.configs import facecloak as fc_presets
from jaxcloak.configs import map as map_presets
from jaxcloak.configs.files import (
    ConfigError,
    apply_overrides,
    as_argv,
    dump_config,
    load_config,
    load_toml,
    parse_set_value,
    parse_sets,
    protect_options,
    resolve_facecloak,
    resolve_map,
)
from jaxcloak.methods.facecloak.config import CloakConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

#: Every shipped file and the code preset(s) it must equal (None: the file has no such table).
EXPECTED = {
    "facecloak-faithful.toml": (fc_presets.FAITHFUL, None),
    "facecloak-fixed-low.toml": (fc_presets.get_config("fixed", "low"), None),
    "facecloak-fixed-mid.toml": (fc_presets.get_config("fixed", "mid"), None),
    "facecloak-fixed-high.toml": (fc_presets.get_config("fixed", "high"), None),
    "map-paper.toml": (None, map_presets.PAPER),
    "map-demo.toml": (None, map_presets.DEMO),
    "bulk-folder.toml": (fc_presets.get_config("fixed", "mid"), None),
}


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_file_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_file_equals_code_preset(name):
    cfg = load_config(CONFIGS / name)
    want_fc, want_map = EXPECTED[name]
    if want_fc is not None:
        got = resolve_facecloak(cfg)
        assert got == want_fc
        assert got.digest() == want_fc.digest()  # same types too (10 vs 10.0 would differ)
    else:
        assert cfg["facecloak"] == {}
    if want_map is not None:
        # whatever the CLI's default preset, the file decides every field
        for default in ("demo", "paper"):
            got = resolve_map(cfg, default_preset=default)
            assert got == want_map
            assert [type(getattr(got, f.name)) for f in dataclasses.fields(got)] == [
                type(getattr(want_map, f.name)) for f in dataclasses.fields(want_map)
            ]
    else:
        assert cfg["map"] == {}


def test_bulk_template_protect_table():
    opts = protect_options(load_config(CONFIGS / "bulk-folder.toml"))
    assert opts["identity"] == "per-folder"
    assert opts["views_from"] == "group"
    assert opts["quality"] == 92
    argv = as_argv(opts)
    assert argv[:4] == ["--identity", "per-folder", "--views-from", "group"]
    assert "--no-masks" not in argv  # false: flag left out


def test_dump_round_trips(tmp_path):
    fcs = [fc_presets.FAITHFUL, *(fc_presets.get_config("fixed", s) for s in fc_presets.STRENGTHS)]
    odd = dataclasses.replace(
        fc_presets.FIXED, eps=0.0812345, eot=("jpeg", "blur"), alpha_max=None, real_weight=None
    )
    odd_map = dataclasses.replace(map_presets.PAPER, remat=True, sm_t_max=500, unroll=None)
    for fc, mp in [*((c, None) for c in fcs), (odd, odd_map), (None, map_presets.DEMO)]:
        path = _write(tmp_path, dump_config(facecloak=fc, map_config=mp, header="run x\nseed 0"))
        cfg = load_config(path)
        if fc is not None:
            # the file pins everything: a different preset on the command line changes nothing
            assert resolve_facecloak(cfg) == fc
            if fc.mode == "fixed":
                assert resolve_facecloak(cfg, strength="low") == fc
        if mp is not None:
            assert resolve_map(cfg, preset="demo") == mp


# --------------------------------------------------------------------------- errors


def test_unknown_key_names_it_and_suggests(tmp_path):
    path = _write(tmp_path, "[facecloak]\nstpes = 30\n")
    with pytest.raises(ConfigError, match=r"run\.toml: facecloak\.stpes: unknown key.*'steps'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"map\.learning_rat: unknown key.*'learning_rate'"):
        resolve_map(None, ["map.learning_rat=1e-5"])
    with pytest.raises(ConfigError, match=r"facecloak\.zzz: unknown key; known: mode, eps"):
        apply_overrides(CloakConfig(), {"zzz": 1})
    with pytest.raises(ConfigError, match=r"unknown table \[facecloack\].*'facecloak'"):
        load_config(_write(tmp_path, "[facecloack]\neps_levels = 8\n"))
    with pytest.raises(ConfigError, match=r"unknown section 'mapp'.*'map'"):
        parse_sets(["mapp.steps=3"])
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        parse_sets(["facecloak.steps"])
    with pytest.raises(ConfigError, match="needs its section"):
        parse_sets(["steps=3"])


def test_wrong_type_message(tmp_path):
    with pytest.raises(ConfigError, match=r"^facecloak\.steps: expected an integer, got 'abc'$"):
        resolve_facecloak(None, ["facecloak.steps=abc"])
    with pytest.raises(ConfigError, match=r"run\.toml: facecloak\.steps: expected an integer"):
        load_config(_write(tmp_path, "[facecloak]\nsteps = 40.0\n"))
    with pytest.raises(ConfigError, match=r"facecloak\.nesterov: expected true or false, got 1"):
        apply_overrides(CloakConfig(), {"nesterov": 1})
    with pytest.raises(ConfigError, match=r"facecloak\.eps: expected a number, got 'big'"):
        apply_overrides(CloakConfig(), {"eps": "big"})
    with pytest.raises(ConfigError, match=r"facecloak\.eps: expected a number, got none"):
        apply_overrides(CloakConfig(), {"eps": None})
    with pytest.raises(ConfigError, match=r"facecloak\.alpha_max: expected a number or \"none\""):
        resolve_facecloak(None, ["facecloak.alpha_max=x"])
    with pytest.raises(ConfigError, match=r"facecloak\.eot: expected a list of strings"):
        apply_overrides(CloakConfig(), {"eot": [1, 2]})
    with pytest.raises(ConfigError, match=r"facecloak\.mode: expected one of 'faithful', 'fixed'"):
        apply_overrides(CloakConfig(), {"mode": "fast"})
    with pytest.raises(ConfigError, match=r"map\.remat: expected true, false or \"none\""):
        resolve_map(None, ["map.remat=maybe"])
    with pytest.raises(ConfigError, match=r"facecloak\.strength: expected one of 'low', 'mid'"):
        resolve_facecloak(None, ["facecloak.strength=max"])
    # the dataclass's own checks come back as ConfigError naming the section
    with pytest.raises(ConfigError, match=r"^facecloak: unknown eot transforms \['gamma'\]"):
        resolve_facecloak(None, ["facecloak.eot=gamma"])
    with pytest.raises(ConfigError, match=r"^map: projection must be"):
        resolve_map(None, ["map.projection=best"])
    with pytest.raises(ConfigError, match=r"eps_levels .*same field"):
        apply_overrides(CloakConfig(), {"eps": 0.1, "eps_levels": 20})


def test_toml_errors_name_the_file(tmp_path):
    bad = _write(tmp_path, "[facecloak]\neps_levels = 8\nsteps = = 3\n", name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML: .*line 3"):
        load_toml(bad)
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml: no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"run\.toml: facecloak must be a table"):
        load_config(_write(tmp_path, 'facecloak = "fixed"\n'))


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[map]\nsteps = 3 # \xff\n")
    with pytest.raises(ConfigError, match=r"bin\.toml: config file is not UTF-8"):
        load_toml(path)


# --------------------------------------------------------------------------- --set values


def test_set_value_parsing():
    assert parse_set_value("3") == 3
    assert parse_set_value("0.08") == 0.08
    assert parse_set_value("1e-5") == 1e-5
    assert parse_set_value("true") is True
    assert parse_set_value('["jpeg", "blur"]') == ["jpeg", "blur"]
    assert parse_set_value("pcgrad") == "pcgrad"
    assert parse_set_value(" none ") == "none"
    assert parse_set_value("a=1\nb") == "a=1\nb"


def test_sets_reach_every_type():
    c = resolve_facecloak(
        None,
        [
            "facecloak.steps=7",  # int
            "facecloak.eps=0.08",  # float
            "facecloak.momentum=1",  # int given to a float field
            "facecloak.nesterov=True",  # bool, case-insensitive
            "facecloak.perceptual=false",
            "facecloak.alpha_max=none",  # Optional -> None
            "facecloak.real_weight=NONE",
            "facecloak.step_decay=0.5",  # Optional given a value
            'facecloak.eot=["jpeg","blur"]',  # tuple
            "facecloak.region_eps_levels=40",  # grey levels
        ],
    )
    assert c.steps == 7 and isinstance(c.steps, int)
    assert c.eps == 0.08
    assert c.momentum == 1.0 and isinstance(c.momentum, float)
    assert c.nesterov is True and c.perceptual is False
    assert c.alpha_max is None and c.real_weight is None and c.step_decay == 0.5
    assert c.eot == ("jpeg", "blur")
    assert c.region_eps == 40 / 255
    assert resolve_facecloak(None, ["facecloak.eot=jpeg, resize"]).eot == ("jpeg", "resize")
    assert resolve_facecloak(None, ["facecloak.eot="]).eot == ()
    assert resolve_facecloak(None, ["facecloak.eot=[]"]).eot == ()
    assert resolve_facecloak(None, ["facecloak.eps-levels=18"]).eps == 18 / 255
    m = resolve_map(
        None,
        [
            "map.remat=true",
            "map.unroll=false",
            "map.sm_t_max=500",
            "map.projection=pcgrad",
            'map.smoothness="lap_l1"',  # quoted strings work too
            "map.learning_rate=1e-5",
        ],
    )
    assert m.remat is True and m.unroll is False and m.sm_t_max == 500
    assert m.projection == "pcgrad" and m.smoothness == "lap_l1" and m.learning_rate == 1e-5
    assert resolve_map(None, ["map.sm_t_max=none"]).sm_t_max is None
    # later --set wins; protect values are passed through typed
    sets = parse_sets(["map.steps=3", "map.steps=4", "protect.quality=90", "protect.format=png"])
    assert sets["map"] == {"steps": 4}
    assert sets["protect"] == {"quality": 90, "format": "png"}


def test_apply_overrides_text_and_typed():
    base = fc_presets.FIXED
    out = apply_overrides(base, {"steps": "12", "eot": "blur", "alpha_max": "none"}, text=True)
    assert (out.steps, out.eot, out.alpha_max) == (12, ("blur",), None)
    out = apply_overrides(base, {"eps_levels": 12, "alpha_max": None, "eot": ["jpeg"]})
    assert (out.eps, out.alpha_max, out.eot) == (12 / 255, None, ("jpeg",))
    assert apply_overrides(map_presets.DEMO, {"t0": 40}).t0 == 40
    assert apply_overrides(base, {}) == base
    with pytest.raises(ConfigError, match="strength chooses a base preset"):
        apply_overrides(base, {"strength": "high"})


# --------------------------------------------------------------------------- precedence


def test_facecloak_precedence(tmp_path):
    cfg = load_config(
        _write(tmp_path, "[facecloak]\nstrength = 'low'\nsteps = 30\neps_levels = 17\n")
    )
    low = fc_presets.get_config("fixed", "low")
    # preset < file
    assert resolve_facecloak(None) == fc_presets.get_config("fixed", "mid")
    c = resolve_facecloak(cfg)
    assert c == dataclasses.replace(low, steps=30, eps=17 / 255)
    # file < explicit flags (None: flag not given)
    c = resolve_facecloak(cfg, explicit={"iterations": 50, "eps_levels": None, "eot": ("jpeg",)})
    assert (c.steps, c.eps, c.eot) == (50, 17 / 255, ("jpeg",))
    # explicit < --set
    c = resolve_facecloak(cfg, ["facecloak.steps=60"], explicit={"iterations": 50})
    assert c.steps == 60
    # the base preset: flag over file, --set over flag
    c = resolve_facecloak(cfg, strength="high")
    assert c == dataclasses.replace(fc_presets.get_config("fixed", "high"), steps=30, eps=17 / 255)
    c = resolve_facecloak(cfg, ["facecloak.strength=mid"], strength="high")
    assert c.dodge_weight == 2.0 and c.eps == 17 / 255
    # iterations follows the resolved mode: passes in the faithful one
    c = resolve_facecloak(None, ["facecloak.mode=faithful"], explicit={"iterations": 3})
    assert c == dataclasses.replace(fc_presets.FAITHFUL, passes=3)
    # a faithful file, a fixed flag: the flag's mode, the file's fields on top
    faithful = load_config(CONFIGS / "facecloak-faithful.toml")
    assert resolve_facecloak(faithful).mode == "faithful"
    with pytest.raises(ConfigError, match="strength 'high' applies to the fixed mode"):
        resolve_facecloak(faithful, strength="high")
    with pytest.raises(ConfigError, match="strength 'low' applies to the fixed mode"):
        resolve_facecloak(cfg, mode="faithful")  # the file's strength, the flag's mode
    with pytest.raises(ConfigError, match=r"^facecloak: .*fixed-mode options"):
        resolve_facecloak({"facecloak": {"momentum": 1.0}}, mode="faithful")
    c = resolve_facecloak(faithful, mode="fixed")
    assert c.mode == "fixed" and c.mask_scale == 255.0 and c.passes == 10


def test_map_precedence(tmp_path):
    cfg = load_config(_write(tmp_path, "[map]\npreset = 'paper'\nsteps = 100\nt0 = 50\n"))
    assert resolve_map(None) == map_presets.DEMO
    assert resolve_map(None, default_preset="paper") == map_presets.PAPER
    assert resolve_map(cfg) == dataclasses.replace(map_presets.PAPER, steps=100, t0=50)
    got = resolve_map(cfg, preset="demo", explicit={"steps": 7, "projection": None, "t0": None})
    assert got == dataclasses.replace(map_presets.DEMO, steps=7, t0=50)
    got = resolve_map(
        cfg, ["map.steps=9", "map.preset=demo"], preset="paper", explicit={"steps": 7}
    )
    assert got == dataclasses.replace(map_presets.DEMO, steps=9, t0=50)
    # a raw dict (not from load_config) is checked the same way
    assert resolve_map({"map": {"steps": 5}}).steps == 5
    with pytest.raises(ConfigError, match=r"map\.steps: expected an integer"):
        resolve_map({"map": {"steps": "5"}})
    # --set of the other section is still checked
    with pytest.raises(ConfigError, match=r"facecloak\.stepz: unknown key"):
        resolve_map(None, ["facecloak.stepz=3"])


def test_layers_merge_before_checking():
    """Settings valid only together may come from different layers."""
    c = resolve_facecloak(
        {"facecloak": {"mode": "faithful"}}, ["facecloak.mode=fixed"], explicit={"eot": ["jpeg"]}
    )
    assert c.mode == "fixed" and c.eot == ("jpeg",)
    m = resolve_map(
        {"map": {"projection": "none"}}, ["map.conflict_stats=false"], default_preset="paper"
    )
    assert m.projection == "none" and m.conflict_stats is False


def test_protect_options_and_argv():
    opts = protect_options({"protect": {"views-from": "group", "no_masks": True, "seed": 3}})
    assert opts == {"views_from": "group", "no_masks": True, "seed": 3}
    assert protect_options(None) == {}
    with pytest.raises(ConfigError, match="given twice"):
        protect_options({"protect": {"views-from": "group", "views_from": "reference"}})
    with pytest.raises(ConfigError, match="keys must be strings"):
        protect_options({"protect": {1: "x"}})
    assert as_argv({"model": ["sface", "ir152"], "format": None, "quality": 9}) == [
        "--model",
        "sface,ir152",
        "--quality",
        "9",
    ]


# ---- the command line: --config / --set reach the configs and protect's own options ----------


def _cli_args(*argv: str):
    from jaxcloak.cli.main import _with_protect_options, build_parser

    parser = build_parser()
    args = parser.parse_args(list(argv))
    return _with_protect_options(parser, args, list(argv)) if args.command == "protect" else args


def test_cli_config_file_and_set_reach_cloak_config(tmp_path):
    from jaxcloak.cli.wiring import cloak_config

    cfg = _write(tmp_path, "[facecloak]\nstrength = 'high'\nsteps = 12\n")
    args = _cli_args("protect", "x.jpg", "-o", "out", "--config", str(cfg))
    assert cloak_config(args) == fc_presets.get_config("fixed", "high", steps=12)
    # flags win over the file, --set over both
    args = _cli_args(
        "protect", "x.jpg", "-o", "o", "--config", str(cfg), "--steps", "5", "--eps", "10"
    )
    assert cloak_config(args) == fc_presets.get_config("fixed", "high", steps=5, eps=10 / 255)
    args = _cli_args("mask", "fit", "me.jpg", "-o", "me.mask", "--steps", "5", "--set",
                     "facecloak.steps=7", "--set", "facecloak.nesterov=true")  # fmt: skip
    assert cloak_config(args) == fc_presets.get_config("fixed", "mid", steps=7, nesterov=True)
    # without any of them: the code preset, exactly as before --config existed
    assert cloak_config(_cli_args("protect", "x.jpg", "-o", "o")) == fc_presets.get_config()
    args = _cli_args("protect", "x.jpg", "-o", "o", "--mode", "faithful", "--steps", "3")
    assert cloak_config(args) == dataclasses.replace(fc_presets.FAITHFUL, passes=3)


def test_cli_map_config(tmp_path):
    from jaxcloak.cli.wiring import map_config

    cfg = _write(tmp_path, "[map]\npreset = 'paper'\nt0 = 40\n")
    args = _cli_args("map", "fit", "me.jpg", "--target", "t.jpg", "-o", "r", "--config", str(cfg))
    assert map_config(args) == dataclasses.replace(map_presets.PAPER, t0=40)
    args = _cli_args("map", "fit", "me.jpg", "--target", "t.jpg", "-o", "r", "--map-steps", "4")
    assert map_config(args) == dataclasses.replace(map_presets.DEMO, steps=4)


def test_cli_protect_table_and_errors(tmp_path):
    from jaxcloak.cli.wiring import cloak_config

    cfg = _write(tmp_path, "[protect]\nidentity = 'per-folder'\nquality = 80\nno_masks = true\n")
    args = _cli_args("protect", "x.jpg", "-o", "o", "--config", str(cfg))
    assert (args.identity, args.quality, args.no_masks) == ("per-folder", 80, True)
    args = _cli_args("protect", "x.jpg", "-o", "o", "--config", str(cfg), "--quality", "90",
                     "--set", "protect.identity=per-file")  # fmt: skip
    assert (args.identity, args.quality) == ("per-file", 90)
    # each value goes through its option's own type and choices
    bad = _write(tmp_path, "[protect]\nformat = 'GIF'\n", name="bad.toml")
    with pytest.raises(SystemExit, match=r"\[protect\]format \(--format\): 'GIF' is not one"):
        _cli_args("protect", "x.jpg", "-o", "o", "--config", str(bad))
    with pytest.raises(SystemExit, match=r"protect\.quality \(--quality\): .*out of range"):
        _cli_args("protect", "x.jpg", "-o", "o", "--set", "protect.quality=900")
    with pytest.raises(SystemExit, match=r"protect\.idenity: not an option.*did you mean identity"):
        _cli_args("protect", "x.jpg", "-o", "o", "--set", "protect.idenity=single")
    with pytest.raises(SystemExit, match=r"no_masks: expected true or false"):
        _cli_args("protect", "x.jpg", "-o", "o", "--set", "protect.no_masks=3")
    # --set wins over the file even to turn a switch off; photos after -- stay photos
    args = _cli_args("protect", "-o", "o", "--config", str(cfg), "--set", "protect.no_masks=false",
                     "--", "--odd-name.jpg")  # fmt: skip
    assert args.no_masks is False and args.photos == ["--odd-name.jpg"]
    assert args.identity == "per-folder" and args.quality == 80
    typo = r"error: facecloak\.stpes: unknown key; did you mean 'steps'"
    with pytest.raises(SystemExit, match=typo):  # protect checks every --set before it starts
        _cli_args("protect", "x.jpg", "-o", "o", "--set", "facecloak.stpes=3")
    args = _cli_args("mask", "fit", "me.jpg", "-o", "me.mask", "--set", "facecloak.stpes=3")
    with pytest.raises(SystemExit, match=typo):
        cloak_config(args)
    with pytest.raises(SystemExit, match=r"error: --config .*missing\.toml"):
        _cli_args("protect", "x.jpg", "-o", "o", "--config", str(tmp_path / "missing.toml"))


def test_map_config_names_every_smoothness_term():
    from jaxcloak.methods.map.config import SMOOTHNESS_NAMES
    from jaxcloak.objectives.map import SMOOTHNESS

    assert set(SMOOTHNESS_NAMES) == set(SMOOTHNESS)


def test_cli_print_config_is_a_config_file(tmp_path, capsys):
    from jaxcloak.cli.main import main

    out = tmp_path / "o"
    argv = ["protect", "x.jpg", "-o", str(out), "--strength", "high", "--set", "map.t0=30"]
    assert main([*argv, "--set", "protect.quality=90", "--print-config"]) == 0
    printed = _write(tmp_path, capsys.readouterr().out)
    cfg = load_config(printed)
    assert protect_options(cfg) == {"quality": 90}
    assert resolve_facecloak(cfg) == fc_presets.get_config("fixed", "high")
    assert resolve_map(cfg, preset="paper") == dataclasses.replace(map_presets.DEMO, t0=30)
    assert not out.exists()  # printed, nothing run


def test_cli_protect_options_elsewhere_are_named_as_ignored(tmp_path, capsys):
    from jaxcloak.cli.main import main

    cfg = _write(tmp_path, "[protect]\nquality = 80\n[facecloak]\nsteps = 3\n")
    argv = ["mask", "fit", "me.jpg", "-o", str(tmp_path / "m.mask"), "--config", str(cfg)]
    assert main([*argv, "--print-config"]) == 0
    err = capsys.readouterr().err
    assert "[protect] options (quality) apply to 'jaxcloak protect' only" in err

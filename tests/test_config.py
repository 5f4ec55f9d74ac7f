"""Config loading: presets, dotted overrides, and validation that names the offending key."""

import pytest

from dmjd.config import ConfigError, available_presets, config_to_yaml, load_config


def test_all_presets_validate():
    names = available_presets()
    assert {"demo", "mae-vit-b", "dmjd-vit-b", "dmjd-vit-l", "dmjd-small-32px"} <= set(names)
    for name in names:
        load_config(name)


def test_paper_recipe_preset_values():
    cfg = load_config("dmjd-vit-b")
    assert (cfg.masking.pattern, cfg.masking.mask_ratio, cfg.masking.num_views) == ("block", 0.6, 2)
    assert (cfg.target.name, cfg.model.decoder_depth, cfg.model.decoder_dim, cfg.model.vdb) == ("hog", 8, 512, True)
    mae = load_config("mae-vit-b")
    assert (mae.masking.num_views, mae.target.name, mae.model.vdb, mae.masking.mask_ratio) == (1, "pixels", False, 0.75)
    # Gradient clipping: the official code clips ConViT-L only (3.0); the paper gives none for ViT-L.
    assert load_config("dmjd-vit-l").optim.clip_grad is None
    assert load_config("dmjd-convit-l").optim.clip_grad == 3.0


def test_overrides_are_typed_and_nested():
    overrides = ["optim.lr=1e-3", "data.name=imagefolder", "data.path=/imgs", "masking.num_views=3", "optim.betas=[0.9, 0.99]"]
    cfg = load_config("demo", overrides)
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.path == "/imgs"
    assert cfg.masking.num_views == 3
    assert cfg.optim.betas == (0.9, 0.99)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'"),
        ("nosuch.key=1", "unknown key 'nosuch'"),
        ("masking.pattern=zigzag", "masking.pattern"),
        ("masking.mask_ratio=1.5", "masking.mask_ratio"),
        ("optim.epochs=ten", "optim.epochs"),
        ("model.patch_size=5", "not divisible by model.patch_size"),
        ("masking.pred_ratio=1.0", "masking"),  # demo: K=2 views of 0.6 reach 1.0; 0.3 cannot
        ("target.name=hog", "cell_size"),
        ("masking.block_size=3", "block_size"),
        ("optim.lr", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    extra = ["masking.mask_ratio=0.3"] if override.startswith("masking.pred_ratio") else []
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("'", ".")):
        load_config("demo", extra + [override])


def test_unknown_key_message_lists_allowed_keys():
    with pytest.raises(ConfigError) as info:
        load_config("demo", ["optim.lrr=1"])
    assert "blr" in str(info.value) and "weight_decay" in str(info.value)


def test_unknown_preset_lists_options(tmp_path):
    with pytest.raises(ConfigError, match=r"available: .*demo"):
        load_config("no-such-preset")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_file_preset_round_trip(tmp_path):
    cfg = load_config("demo", ["optim.epochs=7"])
    path = tmp_path / "run.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


def test_every_cross_key_problem_is_reported_one_line_each():
    with pytest.raises(ConfigError) as info:
        load_config(
            "demo", ["target.name=hog", "target.cell_size=3", "masking.block_size=3", "loss.mim_weight=0", "model.vdb=false"]
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines
    assert "target.cell_size=3" in lines[0] and "mim_weight=0" in lines[1] and "block_size=3" in lines[2]
    assert all(line.startswith("config: ") for line in lines)


@pytest.mark.parametrize("override", ["bad.key=1", "optim.epoch=3", "train.budget_plan.total_stepz=3", "optimx"])
def test_override_keys_are_refused_as_load_config_refuses_them(override):
    """``check_override_keys`` (run before a resumed run's checkpoint is read) words an unknown key
    or a malformed override exactly as a full validation does."""
    from dmjd.config.loading import check_override_keys

    with pytest.raises(ConfigError) as full:
        load_config(None, [override])
    with pytest.raises(ConfigError) as early:
        check_override_keys([override])
    assert str(early.value) in str(full.value).splitlines()


def test_override_keys_check_no_values_and_accept_any_key_of_a_mapping():
    from dmjd.config.loading import check_override_keys

    check_override_keys(["optim.epochs=-1", "train.budget_plan.total_steps=5", "recipe.reasons.model.size=why"])
    with pytest.raises(ConfigError, match=r"cannot set optim\.epochs\.x: optim\.epochs is not a section"):
        check_override_keys(["optim.epochs.x=3"])


def test_a_bad_key_is_refused_before_torch_loads_with_and_without_resume(tmp_path):
    """``dmjd pretrain`` checks keys before it imports the engine, also with ``--resume auto``
    (whose overrides apply to a saved config); that torch stays unloaded is what makes it quick."""
    import subprocess
    import sys

    script = (
        "import sys; from dmjd.cli import main\n"
        "for extra in ([], ['--resume', 'auto']):\n"
        f"    code = main(['pretrain', '--output-dir', {str(tmp_path)!r}, *extra, 'optim.epoch=3'])\n"
        "    assert code == 2, code\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("TORCH False")
    assert run.stderr.count("unknown key 'optim.epoch'") == 2

"""Recipes are data: typed, validated once, overridable from the command line."""

import dataclasses
import re

import pytest

from tinyae.config import choose_recipe, load_recipe, parse_overrides
from tinyae.errors import ConfigError


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux", "flux2", "sana", "qwen-image", "smoke"])
def test_every_shipped_recipe_loads_and_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.train.steps > 0


def test_gpu_recipes_follow_the_public_taesd_recipe():
    for name in ["sd", "sdxl", "sd3", "flux", "flux2", "sana", "qwen-image"]:
        r = load_recipe(name)
        assert r.teacher.name == name
        assert r.optim.lr == 3e-4 and r.optim.betas == [0.9, 0.9]
        # small crops of any size, then a closing phase at the teacher's resolution
        assert r.data.resolution < r.data.final_resolution == (512 if name == "sd" else 1024)
        assert r.data.crop_scale == "any" and 0 < r.data.color_aug < 1
        assert 0 < r.data.final_steps < r.train.steps
        # an adversarial-dominant decoder with a sized gradient, a least-squares relativistic GAN with replay,
        # a multi-depth discriminator, a faint pooled MSE and no LPIPS
        assert (r.loss.adv_loss, r.loss.adv_scale, r.loss.disc) == ("relativistic", "adaptive", "multiscale")
        assert r.loss.replay > 0 and r.loss.pixel_pool == 8 and r.loss.pixel_weight < r.loss.adv_weight
        assert r.loss.lpips_weight == 0
        assert r.optim.amsgrad and r.student.mid_grey_init and r.train.ema_decay > 0


def test_cli_overrides_use_dotted_names_and_aliases():
    r = load_recipe("smoke", ["--train.steps", "70", "--teacher", "sdxl", "--optim.lr=1e-3", "--output", "x/y",
                              "--data.hflip", "false"])
    assert r.train.steps == 70
    assert r.teacher.name == "sdxl"
    assert r.optim.lr == pytest.approx(1e-3)
    assert r.train.output_dir == "x/y"
    assert r.data.hflip is False


def test_an_int_is_accepted_where_a_float_is_expected():
    assert load_recipe("smoke", {"loss": {"adv_weight": 1}}).loss.adv_weight == 1.0


def test_unknown_field_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_recipe("smoke", ["--train.stepz", "3"])


def test_wrong_type_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*int"):
        load_recipe("smoke", ["--train.batch_size", "eight"])
    with pytest.raises(ConfigError, match=r"student\.encoder_blocks\[1\]"):
        load_recipe("smoke", {"student": {"encoder_blocks": [1, "x", 3, 3]}})


def test_invalid_values_are_refused_with_the_rule():
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_recipe("smoke", ["--train.mixed_precision", "fp8"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_recipe("smoke", ["--data.resolution", "100"])


def test_an_option_without_section_is_refused():
    with pytest.raises(ConfigError, match="--section.field"):
        parse_overrides(["--stepz", "3"])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="smoke"):
        load_recipe("nope")


def test_the_teacher_picks_its_recipe_unless_one_is_named():
    assert choose_recipe(None, ["--teacher", "sdxl"]) == "sdxl"
    assert choose_recipe(None, ["--teacher", "me/my-vae"]) == "sd"
    assert choose_recipe("smoke", ["--teacher", "sdxl"]) == "smoke"


def test_a_teacher_recipe_states_only_its_differences_from_the_base(tmp_path):
    base, sdxl = load_recipe("base"), load_recipe("sdxl")
    assert sdxl.teacher.name == "sdxl" and sdxl.teacher.dtype == "fp16"
    assert sdxl.train == base.train and sdxl.loss == base.loss
    assert sdxl.data == dataclasses.replace(base.data, final_resolution=1024)  # its closing phase at 1024 px
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: sdxl\ntrain:\n  steps: 70000\n")  # a user's recipe may extend a shipped one
    assert load_recipe(str(mine)).train.steps == 70000 and load_recipe(str(mine)).teacher.name == "sdxl"


def test_a_recipe_that_extends_itself_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_enumerated_fields_name_their_choices():
    with pytest.raises(ConfigError, match=r"loss\.latent' must be one of mse, l1, got 'l2'"):
        load_recipe("smoke", ["--loss.latent", "l2"])
    assert load_recipe("smoke", ["--train.mixed_precision", "no"]).train.mixed_precision == "no"  # YAML's no


@pytest.mark.parametrize("field, value", [
    ("train.checkpoint_every", "0"), ("train.sample_every", "0"), ("train.log_every", "0"),
    ("optim.lr", "-1e-4"), ("optim.lr", "0"), ("optim.disc_lr", "-1e-4"), ("optim.weight_decay", "-0.1"),
    ("optim.betas", "[0.9, 1.0]"), ("optim.grad_clip", "-1"), ("optim.warmup_steps", "-5"),
])
def test_values_that_would_fail_or_train_backwards_mid_run_are_refused_at_start(field, value):
    with pytest.raises(ConfigError, match=rf"Invalid value for --{re.escape(field)}: {re.escape(field)} must be"):
        load_recipe("smoke", [f"--{field}", value])


# ---------------------------------------------------------------- numbers that cannot train, refused at start


@pytest.mark.parametrize("field, value, rule", [
    ("optim.lr", ".inf", "must be a finite number"), ("loss.latent_weight", ".nan", "must be a finite number"),
    ("loss.pixel_weight", "-1", "cannot be negative"), ("loss.lpips_weight", "-0.1", "cannot be negative"),
    ("optim.disc_lr", ".nan", "must be a finite number"), ("teacher.scaling_factor", ".inf", "must be a finite"),
    ("loss.disc_width", "0", "must be positive"), ("data.holdout", "-1", "cannot be negative"),
    ("data.resolution", "16", "must be between 32 and 4096 px"), ("data.resolution", "65536", "must be between 32"),
    ("data.final_resolution", "24", "must be between 32"), ("data.final_resolution", "8192", "must be between 32"),
])
def test_numbers_that_cannot_train_are_refused_at_start(field, value, rule):
    with pytest.raises(ConfigError, match=rf"Invalid value for --{re.escape(field)}: {re.escape(field)} {rule}"):
        load_recipe("smoke", [f"--{field}", value])


# ---------------------------------------------------------------- recipe files


def test_an_empty_section_of_a_derived_recipe_keeps_the_base_values(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: smoke\ntrain:\n")
    assert load_recipe(str(tmp_path / "mine.yaml")).train == load_recipe("smoke").train


def test_a_section_that_is_not_a_mapping_is_refused_even_with_overrides_of_it(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: smoke\ntrain: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"section 'train' must be a mapping of fields, got \[1, 2\]"):
        load_recipe(str(tmp_path / "mine.yaml"), ["--train.steps", "3"])


def test_a_recipe_file_that_is_not_utf8_is_refused_with_a_sentence(tmp_path):
    (tmp_path / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_recipe(str(tmp_path / "latin.yaml"))


def test_a_recipe_file_without_the_yaml_extension_is_named_as_such(tmp_path):
    (tmp_path / "notyaml.txt").write_text("train:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"notyaml.txt' is not a recipe: recipe files end in .yaml"):
        load_recipe(str(tmp_path / "notyaml.txt"))


def test_a_base_named_without_its_extension_points_to_the_sibling_file(tmp_path):
    (tmp_path / "b.yaml").write_text("base: smoke\n")
    (tmp_path / "a.yaml").write_text("base: b\n")
    with pytest.raises(ConfigError, match=r"write base: b.yaml"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_a_value_from_a_recipe_file_names_the_recipe_and_one_from_the_command_line_names_the_flag(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: smoke\ndata:\n  resolution: 36\n")
    with pytest.raises(ConfigError, match="Invalid recipe 'mine': data.resolution must be a multiple of 8"):
        load_recipe(str(tmp_path / "mine.yaml"))
    with pytest.raises(ConfigError, match="Invalid value for --data.resolution: data.resolution must be"):
        load_recipe("sd", ["--teacher", "tiny", "--resolution", "36"])  # not "Invalid recipe 'sd'"

"""The quality study: which parts of the published TAESD recipe make a student better, measured on a CPU.

Every arm trains students from the same sharp, real teacher (the TAEF2 pair, FLUX.2 latents)
on the same photos for the same number of steps, once per seed, with the study recipe
(recipes/study.yaml: the published recipe at CPU scale) and a few fields changed: one arm
per change, left out of the full recipe, plus today's former default (`baseline`). Each
student is then evaluated on Kodak-24 centre crops at 256 and 512 px against the teacher's
decode and against the original, and `write_report` turns the runs into docs/quality.md:
a table (means over seeds, with their spread), one comparison grid per arm and the loss curves.
With `curve_every`, each run also keeps a checkpoint every so many steps and each of them is
evaluated at the smallest resolution: the Kodak metrics along training, which show whether a
ranking at the end of a short budget is still moving.

Runs are independent processes (`parallel` at a time, `threads` torch threads each) whose
output folders make the study resumable: a finished run is never trained again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tinyae.config import Recipe, TeacherConfig, dotted_fields, load_recipe, merge_recipe_data
from tinyae.data.images import list_images, load_eval_images, to_pil
from tinyae.data.photos import training_photos
from tinyae.errors import ConfigError, DataError
from tinyae.evaluation.evaluate import evaluate, summary, teacher_reference
from tinyae.models.formats import load_student
from tinyae.models.teacher import Teacher, load_teacher
from tinyae.models.variants import SIZES
from tinyae.training.checkpoints import CHECKPOINT_RE, list_checkpoints
from tinyae.training.launch import choose_precision, launcher_precision
from tinyae.training.loop import distill
from tinyae.utils.atomic import atomic_file
from tinyae.utils.locks import acquire, release
from tinyae.utils.tables import fmt, markdown_table

logger = logging.getLogger(__name__)

STUDY_RECIPE = "study"
RESOLUTIONS = (256, 512)
# What the study reports; the two round trips would double the cost of evaluating a run.
COMPARED = ("decoder_vs_teacher", "decoder_vs_original", "teacher_roundtrip_vs_original")
GRID_IMAGES = ("kodim04", "kodim14", "kodim23")  # a face, a scene with saturated colours, parrots


@dataclass(frozen=True)
class Arm:
    name: str
    change: str  # what differs from the full recipe, in words
    overrides: dict = field(default_factory=dict)  # nested recipe fields


def baseline_overrides(steps: int) -> dict:
    """Today's former default recipe: full-resolution MSE + LPIPS + a hinge GAN started after 5% of the steps."""
    return {"loss": {"pixel_weight": 1.0, "pixel_pool": 1, "lpips_weight": 0.1, "adv_weight": 0.3,
                     "adv_start": steps // 20, "adv_loss": "hinge", "adv_scale": "raw", "replay": 0, "disc": "patch",
                     "disc_width": 64},
            "data": {"crop_scale": "zoom", "color_aug": 0.0}, "optim": {"amsgrad": False},
            "student": {"mid_grey_init": False}}


def arms(steps: int) -> list[Arm]:
    return [
        Arm("full", "the published recipe (recipes/study.yaml)"),
        Arm("baseline", "the former default: full-res MSE 1 + LPIPS 0.1 + hinge GAN 0.3 from 5% of the steps, small "
                        "patch discriminator, zoomed-out crops, no colour augmentation, plain Adam",
            baseline_overrides(steps)),
        Arm("raw_gradient", "adversarial gradient as the loss gives it, not normalised", {"loss": {"adv_scale": "raw"}}),
        Arm("adaptive_gradient", "VQGAN's adaptive weight instead of the normalisation",
            {"loss": {"adv_scale": "adaptive"}}),
        Arm("hinge", "hinge objective instead of relativistic least squares", {"loss": {"adv_loss": "hinge"}}),
        Arm("no_replay", "no replay buffer of past fakes", {"loss": {"replay": 0}}),
        Arm("patch_disc", "the small one-scale patch discriminator instead of the multi-depth one",
            {"loss": {"disc": "patch", "disc_width": 64}}),
        Arm("full_res_mse", "MSE at full resolution, weight 1, instead of the faint 8x-pooled one",
            {"loss": {"pixel_pool": 1, "pixel_weight": 1.0}}),
        Arm("lpips", "LPIPS (AlexNet) 0.1 added", {"loss": {"lpips_weight": 0.1}}),
        Arm("encoder_l1", "L1 instead of MSE on the encoder's latents", {"loss": {"latent": "l1"}}),
        Arm("encoder_adv", "the encoder's round trip judged by the discriminator too (weight 0.1)",
            {"loss": {"encoder_adv_weight": 0.1}}),
        Arm("zoom_crops", "crops of half to all of the image (zoom 2) instead of any size", {"data": {"crop_scale": "zoom"}}),
        Arm("no_color_aug", "no colour augmentation", {"data": {"color_aug": 0.0}}),
        Arm("no_final_phase", "no closing phase at the larger crop size (the same steps at the small one)",
            {"data": {"final_steps": 0}}),
        Arm("no_amsgrad_grey", "plain Adam and the default decoder bias (no amsgrad, no mid-grey start)",
            {"optim": {"amsgrad": False}, "student": {"mid_grey_init": False}}),
        # Not recipe changes: the full recipe training the narrower students of tinyae.models.variants.SIZES,
        # which decides the fastest size whose quality stays close to `tiny` (the other arms' size).
        *[Arm(f"size_{size}", f"student.size {size} ({SIZES[size].note})", {"student": {"size": size}})
          for size in SIZES if size != "tiny"],
    ]


def warm_arms(steps: int) -> list[Arm]:
    """The same question where students start near the teacher: a warm start from a published TAE (the study's
    overrides name it, e.g. `--student.init taef2`) fine-tuned by each decoder objective, and a cold start."""
    gan = {"adv_start": 0, "adv_loss": "relativistic", "adv_scale": "adaptive", "replay": 1024, "disc": "multiscale",
           "disc_width": 32}
    return [
        Arm("finetune", "the finetune recipe (recipes/finetune.yaml): L1 + LPIPS 0.1 against the teacher's decode, "
                        "no GAN"),
        Arm("published", "the published decoder objective: the relativistic GAN (weight 1, VQGAN's adaptive gradient "
                         "size, replay buffer, multi-depth discriminator at width 32) with only a faint 8x-pooled MSE "
                         "(weight 0.5), no LPIPS, amsgrad",
            {"loss": {"pixel": "mse", "pixel_weight": 0.5, "pixel_pool": 8, "lpips_weight": 0.0, "adv_weight": 1.0,
                      **gan}, "optim": {"amsgrad": True}}),
        Arm("former_default", "the former default: full-res MSE 1 + LPIPS 0.1 + hinge GAN 0.3 from 5% of the steps, "
                              "small patch discriminator",
            {"loss": baseline_overrides(steps)["loss"] | {"pixel": "mse"}}),
        Arm("finetune_gan", "the finetune recipe plus the published GAN at a tenth of the reconstruction's gradient "
                            "(adaptive weight 0.1)", {"loss": {"adv_weight": 0.1, **gan}}),
        Arm("cold", "no warm start: the finetune recipe from a fresh student, both halves trained (a fresh encoder "
                    "cannot stay frozen)", {"student": {"init": None}, "train": {"parts": "both"}}),
    ]


@dataclass(frozen=True)
class Regime:
    """Where the study's students start: its base recipe, its arms and the arm the others are compared with."""
    recipe: str
    arms: Callable[[int], list[Arm]]
    reference: str
    closing_phase: bool  # 10% of the steps at the recipe's closing crop size
    students: str  # the report's first words: what was trained from what


REGIMES = {
    "study": Regime(STUDY_RECIPE, arms, "full", True,
                    "Students of the `flux_2` layout trained from the real TAEF2 pair (FLUX.2 latents, 30.0 dB on "
                    "Kodak-24 at 512 px)"),
    "finetune": Regime("finetune", warm_arms, "finetune", False,
                       "Students warm-started from a published TAE (`student.init`) and fine-tuned for another "
                       "teacher with the `finetune` recipe"),
}


@dataclass
class Study:
    out: Path
    photos: Path
    kodak: Path
    steps: int = 300
    seeds: tuple[int, ...] = (0, 1)
    arm_names: tuple[str, ...] = ()
    parallel: int = 2
    threads: int = 1
    overrides: dict = field(default_factory=dict)  # applied to every arm (e.g. a shorter smoke of the study)
    resolutions: tuple[int, ...] = RESOLUTIONS  # Kodak centre crops, px
    reference: str = ""  # the arm the verdicts compare every other arm with (default: the regime's)
    curve_every: int = 0  # keep and evaluate a checkpoint every so many steps (0: only the end)
    fetch_photos: bool = False  # fetch the default training photos into `photos` when training starts
    regime: str = "study"  # a key of REGIMES: the base recipe and its arms

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ConfigError(f"Unknown study regime '{self.regime}'; regimes: {', '.join(REGIMES)}.")
        self.reference = self.reference or REGIMES[self.regime].reference
        _ = self.arms  # unknown arm names are refused here, before any work
        if self.curve_every and not 0 < self.curve_every <= self.steps:
            raise ConfigError(f"--curve-every {self.curve_every} should be between 1 and --steps ({self.steps}).")
        every = REGIMES[self.regime].arms(self.steps)
        if self.reference not in {a.name for a in every}:
            raise ConfigError(f"Unknown reference arm '{self.reference}'; arms: {', '.join(a.name for a in every)}.")

    @property
    def arms(self) -> list[Arm]:
        every = REGIMES[self.regime].arms(self.steps)
        if not self.arm_names:
            return every
        unknown = sorted(set(self.arm_names) - {a.name for a in every})
        if unknown:
            raise ConfigError(f"Unknown study arm '{unknown[0]}'; arms: {', '.join(a.name for a in every)}.")
        return [a for a in every if a.name in self.arm_names]

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / arm.name / f"seed{seed}"

    def recipe(self, arm: Arm, seed: int) -> Recipe:
        regime = REGIMES[self.regime]
        common = {"data": {"path": str(self.photos)},
                  "train": {"steps": self.steps, "seed": seed, "output_dir": str(self.run_dir(arm, seed)),
                            "threads": self.threads}}
        if regime.closing_phase:
            common["data"]["final_steps"] = self.steps // 10
        if self.curve_every:
            common["train"] |= {"checkpoint_every": self.curve_every,
                                "checkpoints_total_limit": self.steps // self.curve_every}
        return load_recipe(regime.recipe, merge_recipe_data(merge_recipe_data(common, self.overrides), arm.overrides))

    @property
    def teacher(self) -> TeacherConfig:
        """Every arm's teacher (the regime's recipe with the study's overrides)."""
        return self.recipe(self.arms[0], self.seeds[0]).teacher


# ---------------------------------------------------------------- running


def reference_path(out: Path, resolution: int) -> Path:
    return out / f"kodak-reference-{resolution}.safetensors"


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def teacher_fingerprint(teacher: Teacher) -> str:
    """sha256 of the teacher's weights and of its latent space (scale, shift, per-channel or patch statistics):
    equal exactly when it encodes and decodes as the teacher a Kodak reference was made with."""
    digest = hashlib.sha256(json.dumps(_plain(vars(teacher.latent_space)), sort_keys=True).encode())
    for key, value in sorted(teacher.vae.state_dict().items()):
        digest.update(f"{key} {value.dtype} {tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_reference_teacher(path: Path, teacher: Teacher, name: str, fingerprint: str) -> None:
    """A Kodak reference is the teacher's latents and decodes: scoring an arm of another teacher against it would
    report that teacher's figures under this one's name. A reference from before teachers were recorded is
    checked by re-encoding its first crop."""
    meta = _metadata(path)
    if "teacher_fingerprint" in meta:
        if meta["teacher_fingerprint"] == fingerprint:
            return
        recorded = meta.get("teacher", "another teacher")
    else:
        ref = load_file(path)
        z = teacher.encode(ref["images"][:1].to(teacher.device).float()).float().cpu()
        if z.shape == ref["z_teacher"][:1].shape and torch.allclose(z, ref["z_teacher"][:1], rtol=1e-3, atol=1e-3):
            return
        recorded = "another teacher"
    same = " with other weights or another latent space" if recorded == name else ""
    raise ConfigError(f"'{path}' is the Kodak reference of the teacher '{recorded}', but this study's teacher is "
                      f"'{name}'{same}: its arms would be scored against the other teacher's latents and decodes; "
                      "pass another --out for this teacher.")


def prepare(study: Study) -> None:
    """The Kodak crops and the teacher's latents and decodes of them, computed once for every run; a reference
    already in --out must be this teacher's (`check_reference_teacher`)."""
    check_kodak(study.kodak)
    names = [p.stem for p in list_images(study.kodak)]
    if len(names) < 2:
        raise DataError(f"'{study.kodak}' should hold the Kodak-24 images (kodim01.png ...); found {len(names)}.")
    teacher = load_teacher(study.teacher)
    name, fingerprint = study.teacher.name, teacher_fingerprint(teacher)
    for resolution in study.resolutions:
        path = reference_path(study.out, resolution)
        if path.exists():
            check_reference_teacher(path, teacher, name, fingerprint)
    for resolution in study.resolutions:
        path = reference_path(study.out, resolution)
        if not path.exists():
            images = load_eval_images(list_images(study.kodak), resolution)
            ref = teacher_reference(teacher, images)
            meta = {"names": json.dumps(names), "teacher": name, "teacher_fingerprint": fingerprint}
            atomic_file(path, lambda tmp: save_file({"images": images.contiguous(), **ref}, str(tmp), metadata=meta))


def _on_kodak(student_path: Path, teacher: TeacherConfig, study_out: Path, resolutions: Sequence[int]) -> dict:
    teacher = load_teacher(teacher)
    student = load_student(student_path)
    refs = [load_file(reference_path(study_out, r)) for r in resolutions]
    names = json.loads(_metadata(reference_path(study_out, resolutions[0]))["names"])
    return evaluate(student, teacher, [r.pop("images") for r in refs], names, references=refs,
                    comparisons=COMPARED, precision=False)


def evaluate_run(run_dir: Path, teacher: TeacherConfig, study_out: Path, resolutions: Sequence[int]) -> dict:
    """The run's student on the Kodak crops at every study resolution; written to kodak.json."""
    results = _on_kodak(run_dir / "student", teacher, study_out, resolutions)
    atomic_file(run_dir / "kodak.json", lambda tmp: Path(tmp).write_text(json.dumps(_json_safe(results)) + "\n"))
    return results


CURVE = "kodak-steps.json"


def _kept_steps(run_dir: Path) -> dict[str, Path]:
    """The run's finished checkpoints by step, as kodak-steps.json names them."""
    return {CHECKPOINT_RE.match(c.name).group(1): c for c in list_checkpoints(run_dir)}


def evaluate_checkpoints(run_dir: Path, teacher: TeacherConfig, study_out: Path, resolution: int) -> dict:
    """Every kept checkpoint's EMA student on the Kodak crops at `resolution`: the headline numbers per step,
    written to kodak-steps.json. Steps evaluated before (of a run still training, say) are kept, not redone."""
    path = run_dir / CURVE
    steps = json.loads(path.read_text())["steps"] if path.exists() else {}
    for step, checkpoint in _kept_steps(run_dir).items():
        if step not in steps:
            flat = summary(_on_kodak(checkpoint, teacher, study_out, [resolution]), resolution)
            steps[step] = {key: flat[key] for key, *_ in KEYS}
    curve = {"resolution": resolution, "steps": dict(sorted(steps.items(), key=lambda item: int(item[0])))}
    atomic_file(path, lambda tmp: Path(tmp).write_text(json.dumps(_json_safe(curve)) + "\n"))
    return curve


def _finished(run_dir: Path) -> bool:
    """Trained and evaluated, at the end and (if it kept checkpoints) along training."""
    if not (run_dir / "kodak.json").exists():
        return False
    kept = set(_kept_steps(run_dir))
    return not kept or ((run_dir / CURVE).exists()
                        and kept <= set(json.loads((run_dir / CURVE).read_text())["steps"]))


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _job(recipe: Recipe, run_dir: Path, study_out: Path, resolutions: Sequence[int], log: Path, threads: int) -> None:
    """Runs in a fresh process: train (unless done), then evaluate, everything logged to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(threads)
    if not (run_dir / "run.json").exists():
        distill(recipe)
    if not (run_dir / "kodak.json").exists():
        evaluate_run(run_dir, recipe.teacher, study_out, resolutions)
    if list_checkpoints(run_dir):
        evaluate_checkpoints(run_dir, recipe.teacher, study_out, min(resolutions))  # the steps not evaluated yet


# May differ between calls of one study: where things are, how many threads, which checkpoints are kept.
WHERE_NOT_WHAT = {"data.path", "train.output_dir", "train.threads", "train.checkpoint_every",
                  "train.checkpoints_total_limit"}


def check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """A kept run counts only if it trained what this study asks for (another --steps, another --out)."""
    path = run_dir / "recipe.json"
    if not path.exists():
        return
    kept = dotted_fields(json.loads(path.read_text()))
    wanted = dotted_fields(json.loads(json.dumps(recipe.to_dict())))  # as JSON holds it (tuples as lists)
    for fields in (kept, wanted):  # a run records the precision it trained in, for which `auto` stands
        if fields.get("train.mixed_precision") == "auto":
            fields["train.mixed_precision"] = choose_precision("auto", launcher_precision())
    changed = [name for name, value in wanted.items() if name not in WHERE_NOT_WHAT and kept.get(name) != value]
    if changed:
        raise ConfigError(f"'{run_dir}' holds a run of another recipe ({', '.join(changed[:3])} differ): a study "
                          "with other settings needs its own --out (or delete that run to train it again).")


def run_lock(study: Study, arm: Arm, seed: int) -> Path:
    return study.run_dir(arm, seed).parent / f"seed{seed}.lock"


def claim_run(study: Study, arm: Arm, seed: int) -> Recipe | None:
    """The recipe to train (arm, seed) with, locked for this process; None if it is finished or another live
    study is training it. A run a killed study left continues from its newest checkpoint."""
    run_dir, recipe = study.run_dir(arm, seed), study.recipe(arm, seed)
    check_same_recipe(run_dir, recipe)
    if _finished(run_dir):
        return None
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    owner = acquire(run_lock(study, arm, seed))
    if owner is not None:
        logger.warning("Study run %s/seed%d is being trained by another study (process %d); leaving it to that one.",
                       arm.name, seed, owner[1])
        return None
    if run_dir.exists() and not (run_dir / "run.json").exists():  # interrupted: continue where it stopped
        recipe.train.resume = "latest"
    return recipe


def release_run(study: Study, arm: Arm, seed: int) -> None:
    release(run_lock(study, arm, seed))


def check_kodak(kodak: Path) -> None:
    """The Kodak folder, checked before any work (list_images would ask for --data)."""
    if not Path(kodak).is_dir():
        raise DataError(f"Kodak folder '{kodak}' does not exist; pass --kodak DIR with the Kodak-24 images "
                        "(kodim01.png ...).")


def run_study(study: Study) -> list[Path]:
    """Train and evaluate every (arm, seed) that is not done yet; returns the run folders.

    Every kept run and the Kodak references are checked against this study's recipes and teacher before any
    arm trains, so a mismatch stops the study before it spends anything."""
    check_kodak(study.kodak)
    jobs = [(arm, seed) for arm in study.arms for seed in study.seeds]
    for arm, seed in jobs:
        check_same_recipe(study.run_dir(arm, seed), study.recipe(arm, seed))
    study.out.mkdir(parents=True, exist_ok=True)
    if study.fetch_photos:
        training_photos(study.photos)
    prepare(study)
    context = multiprocessing.get_context("spawn")

    def one(job: tuple[Arm, int]) -> Path:
        arm, seed = job
        run_dir = study.run_dir(arm, seed)
        recipe = claim_run(study, arm, seed)
        if recipe is None:
            return run_dir
        try:
            log = run_dir.parent / f"seed{seed}.log"
            process = context.Process(target=_job, args=(recipe, run_dir, study.out, study.resolutions,
                                                         log, study.threads))
            process.start()
            process.join()
        finally:
            release_run(study, arm, seed)
        if process.exitcode != 0:
            raise DataError(f"Study run {arm.name}/seed{seed} failed (exit {process.exitcode}); see {log}.")
        logger.info("Study run %s/seed%d done.", arm.name, seed)
        return run_dir

    with ThreadPoolExecutor(max_workers=study.parallel) as pool:
        return list(pool.map(one, jobs))


# ---------------------------------------------------------------- the report

KEYS = [  # (metrics key in the 512 px summary, header, format, better)
    ("psnr_vs_teacher", "PSNR vs teacher", ".2f", "high"),
    ("ssim_vs_teacher", "SSIM vs teacher", ".3f", "high"),
    ("lpips_vs_teacher", "LPIPS vs teacher", ".3f", "low"),
    ("colour_error_vs_teacher", "colour error vs teacher", ".2f", "low"),
    ("psnr_vs_original", "PSNR vs original", ".2f", "high"),
    ("lpips_vs_original", "LPIPS vs original", ".3f", "low"),
    ("colour_error_vs_original", "colour error vs original", ".2f", "low"),
    ("chroma_diff_vs_original", "ΔC*ab", "+.2f", "zero"),
    ("saturation_diff_vs_original", "Δsat", "+.3f", "zero"),
    ("latent_r2", "latent R²", ".3f", "high"),
]


def collect(study: Study) -> dict[str, dict]:
    """Per arm: per resolution, per key, the values over seeds; and the cost per run."""
    table: dict[str, dict] = {}
    for arm in study.arms:
        entry: dict = {"change": arm.change, "values": {}, "cpu_min": [], "wall_min": [], "curve": {},
                       "unfinished": []}
        for seed in study.seeds:
            run_dir = study.run_dir(arm, seed)
            if (run_dir / CURVE).exists():  # also while the run is still training: the steps it has reached
                for step, flat in json.loads((run_dir / CURVE).read_text())["steps"].items():
                    for key, value in flat.items():
                        entry["curve"].setdefault(int(step), {}).setdefault(key, []).append(value)
            if not (run_dir / "kodak.json").exists():
                entry["unfinished"].append(seed)
                continue
            results = json.loads((run_dir / "kodak.json").read_text())
            for resolution in results["resolutions"]:
                flat = summary(results, int(resolution))
                for key, *_ in KEYS:
                    entry["values"].setdefault(resolution, {}).setdefault(key, []).append(flat[key])
            spent = json.loads((run_dir / "run.json").read_text()).get("time", {})
            entry["cpu_min"].append(spent.get("cpu_s", math.nan) / 60)
            entry["wall_min"].append(spent.get("wall_s", math.nan) / 60)
        table[arm.name] = entry
    return table


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else math.nan


def _spread(values: Sequence[float]) -> float:
    """Half the range over seeds: how far one seed may sit from the mean."""
    values = [v for v in values if v is not None]
    return (max(values) - min(values)) / 2 if len(values) > 1 else math.nan


def comparison_table(table: dict[str, dict], resolution: str) -> str:
    header = ["arm", *[name for _, name, _, _ in KEYS], "CPU min/run"]
    rows = []
    for arm, entry in table.items():
        values = entry["values"].get(resolution)
        if not values:
            continue
        cells = [f"{fmt(_mean(values[k]), spec)} ± {fmt(_spread(values[k]), spec.lstrip('+'))}" for k, _, spec, _ in KEYS]
        rows.append([f"`{arm}`", *cells, fmt(_mean(entry["cpu_min"]), ".1f")])
    return markdown_table(header, rows)


def verdicts(table: dict[str, dict], resolution: str, reference: str = "full") -> list[str]:
    """For each arm and headline metric: is the difference to `reference` larger than the seeds' spread?"""
    if reference not in table:  # a study of some arms only, without the reference
        return []
    ref = table[reference]["values"].get(resolution)
    lines = []
    for arm, entry in table.items():
        values = entry["values"].get(resolution)
        if arm == reference or not values or not ref:
            continue
        parts = []
        for key, name, spec, better in KEYS[:7]:
            delta = _mean(values[key]) - _mean(ref[key])
            noise = _spread(values[key]) + _spread(ref[key])
            sign = 1 if better == "high" else -1
            direction = "better" if sign * delta > 0 else "worse"
            word = (f"{direction}, one seed: no spread" if math.isnan(noise) else direction if abs(delta) > noise
                    else "within the seed spread")
            parts.append(f"{name} {delta:+{spec.lstrip('+')}} ({word})")
        lines.append(f"- `{arm}` vs `{reference}`: " + "; ".join(parts))
    return lines


CURVE_KEYS = ("psnr_vs_teacher", "lpips_vs_teacher", "lpips_vs_original", "colour_error_vs_original")


def curve_table(table: dict[str, dict]) -> str:
    """The headline numbers at each kept checkpoint, one row per arm and step (means over seeds ± spread)."""
    specs = {key: (name, spec) for key, name, spec, _ in KEYS}
    header = ["arm", "step", *[specs[k][0] for k in CURVE_KEYS]]
    rows = [[f"`{arm}`", str(step), *[f"{fmt(_mean(values[k]), specs[k][1])} ± {fmt(_spread(values[k]), specs[k][1])}"
                                      for k in CURVE_KEYS]]
            for arm, entry in table.items() for step, values in sorted(entry["curve"].items())]
    return markdown_table(header, rows)


def plot_curves(table: dict[str, dict], path: Path, resolution: int) -> Path:
    """The headline numbers against steps, one line per arm, the seeds' spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {key: name for key, name, *_ in KEYS}
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(5 * len(CURVE_KEYS), 3.6), constrained_layout=True)
    for arm, entry in table.items():
        steps = sorted(entry["curve"])
        for ax, key in zip(axes, CURVE_KEYS):
            points = [entry["curve"][t][key] for t in steps]
            ax.errorbar(steps, [_mean(v) for v in points], yerr=[_spread(v) for v in points], marker="o",
                        capsize=3, label=arm)
    for ax, key in zip(axes, CURVE_KEYS):
        ax.set(title=f"{names[key]} ({resolution} px Kodak)", xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def comparison_grid(study: Study, arm: Arm, path: Path) -> Path:
    """Rows of Kodak crops (smallest resolution): original | teacher | the arm's student (first seed)."""
    ref = load_file(reference_path(study.out, min(study.resolutions)))
    names = json.loads(_metadata(reference_path(study.out, min(study.resolutions)))["names"])
    rows = [names.index(n) for n in GRID_IMAGES if n in names] or list(range(min(3, len(names))))
    student = load_student(study.run_dir(arm, study.seeds[0]) / "student").eval()
    with torch.no_grad():
        decoded = student.decode(ref["z_teacher"][rows]).clamp(-1, 1)
    cells = torch.stack([ref["images"][rows], ref["teacher"][rows].clamp(-1, 1), decoded], 1)  # (R, 3, C, H, W)
    r, k, c, h, w = cells.shape
    grid = cells.permute(2, 0, 3, 1, 4).reshape(c, r * h, k * w)
    atomic_file(path, lambda tmp: to_pil(grid).save(tmp, format="JPEG", quality=88))
    return path


def loss_curves(study: Study, path: Path) -> Path:
    """Each logged term over steps, one line per arm (mean over seeds), from the runs' TensorBoard logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = ["loss/latent", "loss/pixel", "loss/adv", "loss/disc", "health/disc_real_acc", "health/adv_grad_ratio"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), constrained_layout=True)
    for arm in study.arms:
        series: dict[str, list] = {}
        for seed in study.seeds:
            logs = list((study.run_dir(arm, seed) / "logs").rglob("events.out.tfevents.*"))
            if not logs:
                continue
            events = EventAccumulator(str(logs[0])).Reload()
            for tag in tags:
                if tag in events.Tags()["scalars"]:
                    series.setdefault(tag, []).append({e.step: e.value for e in events.Scalars(tag)})
        for ax, tag in zip(axes.flat, tags):
            if tag not in series:
                continue
            steps = sorted(set.intersection(*(set(s) for s in series[tag])))
            ax.plot(steps, [statistics.fmean(s[t] for s in series[tag]) for t in steps], label=arm,
                    lw=2.2 if arm in ("full", "baseline") else 1, ls="-" if arm in ("full", "baseline") else "--")
    for ax, tag in zip(axes.flat, tags):
        ax.set(title=tag, xlabel="step")
        if tag.endswith(("ratio", "latent", "pixel")):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


# The bound a narrower size must keep against `tiny` trained the same way (issue: "a size at least 40x faster ...
# losing at most 1 dB PSNR and 0.03 LPIPS"), on the headline resolution (the largest).
SIZE_BOUND = {"psnr_vs_teacher": -1.0, "lpips_vs_teacher": 0.03}


def read_bench(path: Path) -> dict:
    try:
        bench = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot read the benchmark '{path}' ({e}); pass the bench.json that `tinyae bench --sizes "
                        "...` wrote.") from e
    if not {"ratios", "measurements"} <= set(bench):
        raise DataError(f"'{path}' is not a bench.json of `tinyae bench` (no ratios/measurements).")
    return bench


def size_frontier(table: dict[str, dict], bench: dict | None, resolution: str) -> list[dict]:
    """Per size: its quality against `full` (the tiny size) and, from a `tinyae bench --sizes` result, its decode
    speed-up over the teacher VAE there; `within_bound` says whether it keeps SIZE_BOUND."""
    ref = table.get("full", {}).get("values", {}).get(resolution)
    if not ref:
        return []
    speed = {}
    if bench:
        speed = {(r["model"], r["backend"]): r["latency"] for r in bench["ratios"]
                 if r["op"] == "decode" and r["batch"] == 1 and r["resolution"] == max(
                     m["resolution"] for m in bench["measurements"]) and r["versus"] not in SIZES}
    rows = []
    for size in SIZES:
        values = ref if size == "tiny" else table.get(f"size_{size}", {}).get("values", {}).get(resolution)
        if not values:
            continue
        row = {"size": size, "speedup_torch": speed.get((size, "torch")), "speedup_onnx": speed.get((size, "onnxruntime"))}
        for key in SIZE_BOUND:
            row[key] = _mean(values[key])
            row[f"{key}_delta"] = row[key] - _mean(ref[key])
            row[f"{key}_spread"] = _spread(values[key])
        row["within_bound"] = (row["psnr_vs_teacher_delta"] >= SIZE_BOUND["psnr_vs_teacher"]
                               and row["lpips_vs_teacher_delta"] <= SIZE_BOUND["lpips_vs_teacher"])
        rows.append(row)
    return rows


def size_table(rows: list[dict]) -> str:
    header = ["size", "decode x faster than the VAE (torch)", "(ONNX Runtime)", "PSNR vs teacher", "Δ vs tiny",
              "LPIPS vs teacher", "Δ vs tiny", "within 1 dB / 0.03"]
    body = [[f"`{r['size']}`", fmt(r["speedup_torch"], ".1f") + "x" if r["speedup_torch"] else "",
             fmt(r["speedup_onnx"], ".1f") + "x" if r["speedup_onnx"] else "",
             f"{fmt(r['psnr_vs_teacher'], '.2f')} ± {fmt(r['psnr_vs_teacher_spread'], '.2f')}",
             fmt(r["psnr_vs_teacher_delta"], "+.2f"),
             f"{fmt(r['lpips_vs_teacher'], '.3f')} ± {fmt(r['lpips_vs_teacher_spread'], '.3f')}",
             fmt(r["lpips_vs_teacher_delta"], "+.3f"), "yes" if r["within_bound"] else "no"] for r in rows]
    return markdown_table(header, body)


def plot_sizes(rows: list[dict], path: Path) -> Path:
    """Quality against speed per size: the two axes of the frontier in one picture."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, name in zip(axes, SIZE_BOUND, ("PSNR vs teacher (dB)", "LPIPS vs teacher")):
        for backend, marker, colour in (("torch", "o", "C0"), ("onnx", "s", "C1")):
            pts = [(r[f"speedup_{backend}"], r[key], r["size"]) for r in rows if r[f"speedup_{backend}"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                    label="PyTorch" if backend == "torch" else "ONNX Runtime")
            for x, y, size in pts:
                ax.annotate(size, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        tiny = next(r for r in rows if r["size"] == "tiny")
        ax.axhline(tiny[key] + SIZE_BOUND[key], ls="--", color="grey", lw=1)
        ax.annotate("bound", (0.01, tiny[key] + SIZE_BOUND[key]), xycoords=("axes fraction", "data"), fontsize=7)
        ax.axvline(40, ls=":", color="grey", lw=1)
        ax.set(xscale="log", xlabel="decode x faster than the SD VAE, 512 px", ylabel=name)
        ax.set_xticks([10, 20, 40, 60, 100], ["10x", "20x", "40x", "60x", "100x"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def _regime(table: dict[str, dict], resolution: str, reference: str) -> list[str]:
    """Where in training the students are: a budget that leaves the reference arm far below the teacher ranks how
    fast each recipe starts, not where it ends, and the report should say so."""
    psnr = [_mean(e["values"][resolution]["psnr_vs_teacher"]) for e in table.values() if e["values"].get(resolution)]
    r2 = [_mean(e["values"][resolution]["latent_r2"]) for e in table.values() if e["values"].get(resolution)]
    if not psnr:
        return []
    ref = table.get(reference, {}).get("values", {}).get(resolution)
    early = ref is None or _mean(ref["latent_r2"]) < 0.5 or _mean(ref["psnr_vs_teacher"]) < 25
    return [f"At {resolution} px the arms' decoders reach {min(psnr):.1f}-{max(psnr):.1f} dB PSNR against the "
            f"teacher's decode and their encoders a latent R² of {min(r2):.2f}-{max(r2):.2f}"
            + (": the students are early in training, so this ranks how fast each recipe starts, not where it "
               "ends; a longer budget (`--steps`) may rank them otherwise." if early else "."), ""]


def write_report(study: Study, report: Path, figures: Path, command: str = "", bench: dict | None = None) -> Path:
    """docs/quality.md: the table at both resolutions, the verdicts, a grid per arm and the loss curves."""
    table = collect(study)
    figures.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(figures, report.parent)
    grids = {arm.name: comparison_grid(study, arm, figures / f"grid_{arm.name}.jpg") for arm in study.arms
             if (study.run_dir(arm, study.seeds[0]) / "student").exists()}
    curves = loss_curves(study, figures / "curves.png")
    cpu = [m for e in table.values() for m in e["cpu_min"] if math.isfinite(m)]
    lines = [
        "# Quality study: which parts of the published recipe make a student better",
        "",
        f"{REGIMES[study.regime].students}, {study.steps} steps per run"
        + (f" ({study.steps // 10} of them at the closing crop size)" if REGIMES[study.regime].closing_phase else "")
        + ", seeds "
        f"{', '.join(map(str, study.seeds))}, on {len(list_images(study.photos))} photos from Debian packages and "
        f"scikit-image (never Kodak), {study.threads} CPU thread per run. CPU time per run: "
        f"{min(cpu, default=math.nan):.1f}-{max(cpu, default=math.nan):.1f} min. Evaluated on Kodak-24 centre crops; "
        "values are means over seeds ± half their range. Reproduce: "
        f"`{command or 'tinyae study --kodak KODAK'}`.",
        "",
        *_regime(table, str(max(study.resolutions)), study.reference),
        *[f"Not finished: `{arm}` seed(s) {', '.join(map(str, entry['unfinished']))}"
          + (f", evaluated along training up to step {max(entry['curve'])}" if entry["curve"] else "")
          + "; the tables at the end leave them out." for arm, entry in table.items() if entry["unfinished"]],
        "",
        f"| arm | what differs from `{REGIMES[study.regime].arms(1)[0].name}` |",
        "|---|---|",
        *[f"| `{arm}` | {entry['change']} |" for arm, entry in table.items()],
        "",
    ]
    for resolution in map(str, study.resolutions):
        lines += [f"## {resolution} px", "", comparison_table(table, resolution), "",
                  f"Differences to `{study.reference}` at {resolution} px (counted as real when larger than both "
                  "arms' spreads added):", "", *verdicts(table, resolution, study.reference), ""]
    resolution = str(max(study.resolutions))
    sizes = size_frontier(table, bench, resolution)
    if len(sizes) > 1:
        fastest = max((r for r in sizes if r["within_bound"]), key=lambda r: r["speedup_torch"] or 0, default=None)
        lines += ["## Student sizes", "",
                  f"The `size_*` arms train the narrower sizes with the full recipe; their quality at {resolution} px "
                  "against `full` (the `tiny` size), beside their decode speed-up over the SD VAE from "
                  + ("the size benchmark (`tinyae bench --sizes ...`, SD layout, random weights)" if bench else
                     "no benchmark (pass `--bench bench.json`)") + ":", "", size_table(sizes), "",
                  f"Fastest size within the bound: `{fastest['size']}`." if fastest else
                  "No narrower size keeps the bound.", ""]
        if bench:
            lines += [f"![quality against speed per size]({rel}/{plot_sizes(sizes, figures / 'sizes.png').name})",
                      ""]
    if any(entry["curve"] for entry in table.values()):
        size = min(study.resolutions)
        lines += ["## Along training", "",
                  f"Each run's EMA student at every kept checkpoint (every {study.curve_every or 'few'} steps), on "
                  f"Kodak-24 at {size} px: whether the ranking at the end is still moving.", "",
                  curve_table(table), "",
                  f"![Kodak metrics along training]({rel}/{plot_curves(table, figures / 'steps.png', size).name})", ""]
    lines += ["## Loss curves", "", f"![loss curves]({rel}/{curves.name})", "", "## Comparison grids", "",
              f"Kodak crops at {min(study.resolutions)} px: original | teacher | the arm's student decoding "
              "the teacher's latents.", ""]
    for arm, grid in grids.items():
        lines += [f"### `{arm}`", "", f"![{arm}]({rel}/{grid.name})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    atomic_file(report, lambda tmp: Path(tmp).write_text(text))
    return report


def default_photos(out: Path) -> Path:
    """Where the default training photos go (fetched when the study trains: Study.fetch_photos)."""
    return out / "photos"

"""Measure a student against its teacher on a folder of images.

    tinyae evaluate --student runs/sd/student --teacher sd --data DIR --resolution 256 512 --out runs/sd/eval
    tinyae evaluate --student runs/smoke/student --teacher tiny --data path/to/kodak

Writes eval.json, eval.md and grid_<px>.png (original | teacher | student | |student - teacher|)
to --out and prints the tables. Images are centre crops at each resolution; see
tinyae/evaluation/evaluate.py for what each comparison means.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tinyae.config import TeacherConfig
from tinyae.evaluation.evaluate import check_eval_arguments, evaluate_folder, format_table, write_report
from tinyae.evaluation.precision import overflow_warnings
from tinyae.models.formats import load_student
from tinyae.models.teacher import load_teacher
from tinyae.utils.atomic import check_writable
from tinyae.utils.dtypes import DTYPES

HELP = "PSNR/SSIM/MS-SSIM/LPIPS of a student against its teacher on an image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True,
                        help="AutoencoderTiny folder, TAESD pair, training output folder or Hub repo id")
    parser.add_argument("--teacher", required=True, help="preset name, Hub repo id or local diffusers VAE folder")
    parser.add_argument("--teacher-subfolder", help="subfolder of the teacher repo or folder (e.g. vae)")
    parser.add_argument("--data", required=True, help="folder of evaluation images (searched recursively)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[256], help="centre-crop sizes in px")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex")
    parser.add_argument("--grid-images", type=int, default=4, help="images shown in each comparison grid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="teacher dtype")
    parser.add_argument("--out", default="runs/eval", help="report folder (files in it are replaced)")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_eval_arguments(args.resolution, args.limit, args.batch_size)
    check_writable(args.out, "--out")  # before loading and computing, not after
    teacher = load_teacher(TeacherConfig(name=args.teacher, subfolder=args.teacher_subfolder, dtype=args.dtype),
                           device=args.device)
    student = load_student(args.student).to(args.device)
    results, images = evaluate_folder(student, teacher, args.data, args.resolution, args.limit, args.batch_size,
                                      args.lpips_net)
    paths = write_report(results, args.out, student, teacher, images, args.grid_images)
    print(format_table(results))
    if results["unreadable_images"]:
        skipped = results["unreadable_images"]
        print(f"\nSkipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {', '.join(skipped)}")
    for warning in overflow_warnings(results):
        print(f"warning: {warning} Do not ship it in fp16 (bf16 has fp32's range).", file=sys.stderr)
    print(f"\nReport: {paths['md']} (+ eval.json, grids)")

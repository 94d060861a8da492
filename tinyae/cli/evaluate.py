"""Measure a student against its teacher on a folder of images, or a video student on clips.

    tinyae evaluate --student runs/sd/student --teacher sd --data DIR --resolution 256 512 --out runs/sd/eval
    tinyae evaluate --student runs/smoke/student --teacher tiny --data path/to/kodak
    tinyae evaluate --student runs/wan/student --teacher wan2.1 --data VIDEOS --frames 17 --resolution 256

Writes eval.json, eval.md and grid_<px>.png (original | teacher | student | |student - teacher|)
to --out and prints the tables. Images are centre crops at each resolution; see
tinyae/evaluation/evaluate.py for what each comparison means.

A video student (a VideoStudent folder, a training output of one, or a TAEHV file) is measured
against a video teacher on clips of --frames frames, random crops of --resolution px: from the
video files under --data, or, when it holds none (or with --clips photos), pans and zooms over its
photos. It writes eval.json and eval.md (tinyae/evaluation/video_evaluate.py: per-frame metrics,
flicker, latent R² and decode time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tinyae.config import MAX_BATCH, MAX_FRAMES, TeacherConfig, check_positive, check_range
from tinyae.data.clips import VIDEO_EXTENSIONS, ClipPolicy, PhotoClips, VideoFolder
from tinyae.errors import DataError
from tinyae.evaluation.evaluate import check_eval_arguments, evaluate_folder, format_table, write_report
from tinyae.evaluation.precision import overflow_warnings
from tinyae.evaluation.video_evaluate import (
    check_clip_shape,
    evaluate_video,
    format_video_table,
    load_clips,
    write_video_report,
)
from tinyae.models.formats import load_student
from tinyae.models.teacher import load_teacher
from tinyae.models.video_student import is_video_student, load_video_student
from tinyae.models.video_teacher import check_clip_frames, is_video_teacher, load_video_teacher
from tinyae.utils.atomic import check_writable
from tinyae.utils.dtypes import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True,
                        help="AutoencoderTiny folder, TAESD pair, training output folder or Hub repo id; or a "
                             "VideoStudent folder / TAEHV file")
    parser.add_argument("--teacher", required=True, help="preset name, Hub repo id or local diffusers VAE folder")
    parser.add_argument("--teacher-subfolder", help="subfolder of the teacher repo or folder (e.g. vae)")
    parser.add_argument("--data", required=True, help="folder of evaluation images or videos (searched recursively)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[256],
                        help="centre-crop sizes in px (video: one size, the side of the square clips)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (video: clips)")
    parser.add_argument("--batch-size", type=int, help="images (default 4) or clips (default 1) per batch")
    parser.add_argument("--frames", type=int, default=17, help="video: frames per clip, 1 + 4k")
    parser.add_argument("--clips", choices=["auto", "videos", "photos"], default="auto",
                        help="video: clips from the video files under --data, or pans and zooms over its photos "
                             "(auto: videos if there are any)")
    parser.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex")
    parser.add_argument("--grid-images", type=int, default=4, help="images shown in each comparison grid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="teacher dtype")
    parser.add_argument("--out", default="runs/eval", help="report folder (files in it are replaced)")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--batch-size", args.batch_size, high=MAX_BATCH)  # sizes first: nothing allocates past them
    check_range("--frames", args.frames, high=MAX_FRAMES)
    check_range("--grid-images", args.grid_images, low=0, high=64)
    if is_video_student(args.student):
        run_video(args)
        return
    batch_size = 4 if args.batch_size is None else args.batch_size
    check_eval_arguments(args.resolution, args.limit, batch_size)
    check_writable(args.out, "--out")  # before loading and computing, not after
    if is_video_teacher(TeacherConfig(name=args.teacher, subfolder=args.teacher_subfolder)):
        raise DataError(f"'{args.teacher}' is a video teacher but '{args.student}' is an image student: evaluate a "
                        "video student (a VideoStudent folder or TAEHV file) against it, or pass an image teacher.")
    teacher = load_teacher(TeacherConfig(name=args.teacher, subfolder=args.teacher_subfolder, dtype=args.dtype),
                           device=args.device)
    student = load_student(args.student).to(args.device)
    results, images = evaluate_folder(student, teacher, args.data, args.resolution, args.limit, batch_size,
                                      args.lpips_net)
    paths = write_report(results, args.out, student, teacher, images, args.grid_images)
    print(format_table(results))
    if results["unreadable_images"]:
        skipped = results["unreadable_images"]
        print(f"\nSkipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {', '.join(skipped)}")
    for warning in overflow_warnings(results):
        print(f"warning: {warning} Do not ship it in fp16 (bf16 has fp32's range).", file=sys.stderr)
    print(f"\nReport: {paths['md']} (+ eval.json, grids)")


def _has_videos(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in VIDEO_EXTENSIONS for p in folder.rglob("*") if p.is_file())


def run_video(args: argparse.Namespace) -> None:
    """A video student against a video teacher on clips; every argument is checked before the teacher loads."""
    if len(args.resolution) != 1:
        raise DataError(f"A video student is evaluated at one --resolution (the clips' side), got "
                        f"{len(args.resolution)}; pass one size.")
    check_positive("--limit", args.limit)
    check_positive("--batch-size", args.batch_size)
    size = args.resolution[0]
    student = load_video_student(args.student).to(args.device)
    check_clip_shape(student, args.frames, size, size)
    check_writable(args.out, "--out")
    data = Path(args.data)
    policy = ClipPolicy(frames=args.frames, size=size)
    from_videos = args.clips == "videos" or (args.clips == "auto" and _has_videos(data))
    clips = VideoFolder(data, policy) if from_videos else PhotoClips(data, policy, clips_per_photo=1)
    teacher = load_video_teacher(args.teacher, args.teacher_subfolder, args.dtype).to(args.device)
    check_clip_frames(teacher, args.frames, student.arch.time_downscale, "--frames")
    videos, names = load_clips(clips, args.limit)
    batch_size = 1 if args.batch_size is None else args.batch_size
    results = evaluate_video(student, teacher, videos, batch_size=batch_size, lpips_net=args.lpips_net, names=names)
    results["clip_source"] = "video files" if from_videos else "pans and zooms over photos"
    paths = write_video_report(results, args.out)
    print(format_video_table(results))
    print(f"\nReport: {paths['md']} (+ eval.json)")

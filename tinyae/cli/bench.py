"""Latency, peak memory and MACs of students against their teacher(s), in one run.

    tinyae bench --student default --teacher sd sdxl --resolutions 256 512 --repeats 3 --threads 2
    tinyae bench --student default --teacher flux2 sana qwen-image --resolutions 256 512
    tinyae bench --sizes tiny lean slim nano --backend torch onnxruntime --teacher sd --resolutions 512
    tinyae bench --student runs/sdxl/student --teacher sdxl --device cuda --dtype fp16 --batch 1 4

Preset teachers are built from their architecture with random weights (no download; speed does
not depend on weights) unless --teacher-weights; `--student default` gives each teacher the
default student of its family (random weights), measured beside it, `--sizes` the first teacher's
default layout at each registered size (tinyae.models.variants.SIZES), also with random weights.
A student is compared only with teachers of its latent space. `--backend onnxruntime` adds each
student exported to ONNX and run by ONNX Runtime (needs tinyae[onnx]). Writes bench.json, bench.md
(the table, and where each student's MACs go), bench.png and frontier.png to --out.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tinyae.config import MAX_BATCH, MAX_RESOLUTION, check_range
from tinyae.evaluation.bench import (
    BACKENDS,
    bench,
    describe,
    format_cost,
    format_table,
    load_models,
    size_students,
    tiled_decode,
    write_report,
)
from tinyae.utils.atomic import check_writable
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", default="default", help="student folder/repo id, or 'default' (random weights)")
    parser.add_argument("--teacher", nargs="+", default=["sd"], help="preset names, Hub repo ids or VAE folders")
    parser.add_argument("--teacher-weights", action="store_true", help="load real preset weights instead")
    parser.add_argument("--sizes", nargs="+", default=[], help="student sizes to benchmark (tiny, lean, slim, nano)")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=["torch"],
                        help="torch, and onnxruntime for the students")
    parser.add_argument("--reference", help="the student the others are compared to (default: tiny, else the first)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first measures memory)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--tiled-decode", type=int, metavar="PX",
                        help="instead: peak memory and time of one tiled decode to PX x PX per student")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--batch", *args.batch, high=MAX_BATCH)
    check_range("--resolutions", *args.resolutions, high=MAX_RESOLUTION)
    check_range("--threads", args.threads, high=1024)
    check_range("--tiled-decode", args.tiled_decode, high=4 * MAX_RESOLUTION)  # tiles bound the model, not the image
    check_range("--repeats", args.repeats, high=1000)
    check_range("--warmup", args.warmup, low=0, high=1000)
    check_writable(args.out, "--out")  # before the models load and run, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    students, teachers = load_models(args.student, args.teacher, args.device, args.dtype, args.teacher_weights)
    if args.sizes:
        sized = size_students(args.sizes, next(iter(teachers.values())), args.device, args.dtype)
        students = sized if args.student == "default" else {**students, **sized}
    if args.tiled_decode:
        rows = tiled_decode(students, args.tiled_decode)
        print(markdown_table(["student", "px", "peak memory growth MB", "of it the output MB", "s", "finite"],
                             [[r["model"], str(r["resolution"]), f"{r['peak_mem_mb']:.0f}", f"{r['output_mb']:.0f}",
                               f"{r['seconds']:.1f}", str(r["finite"])] for r in rows]))
        return
    backends = ["torch", *(b for b in args.backend if b != "torch")]
    results = bench(students, teachers, args.resolutions, args.batch, args.repeats, args.warmup,
                    log=lambda line: print(line, file=sys.stderr, flush=True), backends=backends,
                    reference=args.reference)
    paths = write_report(results, args.out)
    print(describe(results))
    print(format_table(results))
    print(format_cost(results))
    print(f"\nReport: {paths['md']} (+ bench.json, bench.png, frontier.png)")

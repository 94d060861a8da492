"""Video decode time, peak memory and MACs: a TAEHV-layout student against the full video VAE, in one run.

    tinyae bench-video                                 # Wan 2.1 VAE, 33 frames at 512x320, 2 threads
    tinyae bench-video --teacher hunyuan-video --frames 61 --width 512 --height 320 --out bench-video.json

Both are built from their architectures with random weights (speed does not depend on weights): the
teacher is the preset's full-size VAE, the student the TAEHV layout for its latent space. The student
decodes in parallel (all frames at once, then at most --chunk-size frames through a layer at once) and
streaming (frame by frame); the teacher with diffusers' own decode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tinyae.config import check_range
from tinyae.evaluation.video_bench import check_video_shape, format_video_bench, video_bench
from tinyae.models.video_teacher import VIDEO_TEACHERS
from tinyae.utils.atomic import check_writable_file, write_text_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", choices=list(VIDEO_TEACHERS), default="wan2.1")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per model (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first measures memory)")
    parser.add_argument("--chunk-size", type=int, default=1,
                        help="frames through a layer at once in the chunked parallel decode")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--threads", args.threads, high=1024)
    check_range("--repeats", args.repeats, high=1000)
    check_range("--warmup", args.warmup, low=0, high=1000)
    check_video_shape(args.frames, args.width, args.height, args.chunk_size)
    if args.out:
        check_writable_file(args.out)  # before the benchmark, not after it
    torch.set_num_threads(args.threads)
    results = video_bench(args.teacher, args.frames, args.width, args.height, args.repeats, args.warmup,
                          chunk_size=args.chunk_size)
    print(format_video_bench(results))
    if args.out:
        write_text_file(args.out, json.dumps(results, indent=2) + "\n")

"""Export a trained student for diffusers, ComfyUI / Forge, or both.

    tinyae export --student runs/sd/student --to taesd --dtype fp16 --out ComfyUI/models/vae_approx
    tinyae export --checkpoint runs/sd/checkpoints/checkpoint-5000 --to all
    tinyae export --student runs/sd/student --to onnx --dtype fp16

diffusers: an AutoencoderTiny folder, or a TinyAutoencoder one for FLUX.2, Sana and Qwen-Image students
(fp16 adds the fp16 variant next to the fp32 weights).
taesd: <prefix>_encoder/_decoder .pth + .safetensors (prefix taesd, taesdxl, taesd3, taef1, taef2 or
taesana, which ComfyUI does not use; Qwen-Image has none); the target folder may exist, existing files
are kept unless --overwrite.
taehv: a video student's <model>.pth + .safetensors (taehv.py's names) and, for the models ComfyUI loads,
comfyui/<its name> (lighttaew2_1, lighttaew2_2, taehv) in the dtype ComfyUI reads their latent space from.
--family qwen-image exports a video student of wan2.1 as taew2_1, the file ComfyUI previews Qwen-Image with
(an image student cannot become one: the layouts differ).
all: both in one new folder. onnx: encoder.onnx + decoder.onnx with dynamic height/width (fp16 adds
encoder.fp16.onnx + decoder.fp16.onnx); needs pip install 'tinyae[onnx]'.
The default --out is <source>-<to> beside the source. fp16 exports warn if the student's activations
overflow fp16 on sample photos.
"""

from __future__ import annotations

import argparse

from tinyae.models.formats import FAMILIES
from tinyae.models.video_student import VIDEO_MODELS
from tinyae.shipping.export import TARGETS, checkpoint_student, export_student
from tinyae.utils.dtypes import EXPORT_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint-N folder from training (its student_ema/ is exported)")
    source.add_argument("--student", help="an AutoencoderTiny folder, a TAESD pair or a training output folder")
    parser.add_argument("--to", choices=TARGETS, default="all")
    parser.add_argument("--family", choices=list(FAMILIES),
                        help="names the TAESD files and fixes which pipelines the diffusers folder serves "
                             "(default: from run.json or the folder's config); with --to taehv, the TAEHV model "
                             "clients preview the family with (qwen-image: taew2_1)")
    parser.add_argument("--model", choices=list(VIDEO_MODELS),
                        help="--to taehv: the published TAEHV model the video student stands for (default: its config)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32")
    parser.add_argument("--out", help="target folder (default: <source>-<to>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.checkpoint:
        checkpoint_student(args.checkpoint)  # one sentence if it is not a training checkpoint
    source = args.student or args.checkpoint
    out = export_student(source, args.to, args.family, args.dtype, args.out, args.overwrite, args.model)
    print(f"Exported {source} to {out}")

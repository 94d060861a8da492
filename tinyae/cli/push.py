"""Publish a student on the Hugging Face Hub (diffusers files, TAESD pair, model card).

    tinyae push --student runs/sd --repo-id you/tinyae-sd --dry-run   # build <DIR>-hub/ and list it
    tinyae push --student runs/sd --repo-id you/tinyae-sd            # upload (after `hf auth login`)

--student takes a training output folder (student/, metrics.json, samples/, run.json) or an
AutoencoderTiny folder.
"""

from __future__ import annotations

import argparse

from tinyae.models.formats import FAMILIES
from tinyae.shipping.hub import push_to_hub


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="training output folder or AutoencoderTiny folder")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--family", choices=list(FAMILIES), help="default: from the run's run.json")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="build and list the upload folder, upload nothing")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    push_to_hub(args.student, args.repo_id, private=args.private, dry_run=args.dry_run, family=args.family)

"""Publish a student on the Hugging Face Hub (diffusers files, TAESD pair, model card).

    python scripts/push.py --student runs/sd --repo-id you/tinyae-sd --dry-run   # build <DIR>-hub/ and list it
    python scripts/push.py --student runs/sd --repo-id you/tinyae-sd            # upload (after `hf auth login`)

--student takes a training output folder (student/, metrics.json, samples/, run.json) or an
AutoencoderTiny folder.
"""

import argparse

from tinyae.cli import run
from tinyae.formats import FAMILIES
from tinyae.hub import push_to_hub


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="training output folder or AutoencoderTiny folder")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--family", choices=list(FAMILIES), help="default: from the run's run.json")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="build and list the upload folder, upload nothing")
    args = parser.parse_args(argv)
    push_to_hub(args.student, args.repo_id, private=args.private, dry_run=args.dry_run, family=args.family)


if __name__ == "__main__":
    run(main)

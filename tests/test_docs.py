"""The README and docs/ stay true: every command they show parses with the CLI's own parser (recipe overrides
included), the README stays a front door, and every relative link leads somewhere."""

import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser

from tinyae.cli import COMMANDS, parse
from tinyae.errors import TinyaeError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
RUNS_TINYAE = re.compile(r"(tinyae|python -m tinyae|python scripts/\S+\.py|accelerate launch)(\s|$)")


def shell_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every fenced code block, `\\` continuations joined."""
    lines, inside, pending, start = [], False, "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def tinyae_argv(command: str) -> list[str] | None:
    """The `tinyae` arguments a shell command runs (subcommand first), or None if it does not run tinyae.

    Knows `tinyae X`, `python -m tinyae X`, `python scripts/X.py` and `accelerate launch [its options]` of either
    `scripts/X.py` or `-m tinyae X`; accelerate's own options are checked by accelerate's parser.
    """
    words = shlex.split(command, comments=True)
    if words[:1] == ["tinyae"]:
        return words[1:]
    if words[:3] == ["python", "-m", "tinyae"]:
        return words[3:]
    if words[:1] == ["python"] and len(words) > 1 and words[1].startswith("scripts/"):
        return [script_command(words[1]), *words[2:]]
    if words[:2] == ["accelerate", "launch"]:
        launch = launch_command_parser().parse_args(words[2:])
        if launch.module:
            assert launch.training_script == "tinyae", f"accelerate launches module {launch.training_script}"
            return list(launch.training_script_args)
        return [script_command(launch.training_script), *launch.training_script_args]
    return None


def script_command(script: str) -> str:
    """scripts/X.py runs `tinyae X` (underscores as hyphens; tests/test_packaging.py checks every script is so)."""
    path = Path(script)
    assert path.parent == Path("scripts") and (ROOT / path).is_file(), f"no script {script}"
    return path.stem.replace("_", "-")


def documented_commands(markdown: str) -> list[tuple[int, str]]:
    """(line, command) for each command in the code blocks that runs tinyae; `a && b` counts as two."""
    return [(number, part.strip()) for number, line in shell_lines(markdown)
            for part in line.split("&&") if RUNS_TINYAE.match(part.strip())]


def check_command(command: str) -> None:
    """Parse `command` as the `tinyae` entry point would, and build the recipe its overrides apply to."""
    argv = tinyae_argv(command)
    assert argv is not None, f"`{command}` does not run tinyae"
    args, overrides = parse(argv)
    if getattr(args.module, "OVERRIDES", False):
        args.module.recipe(args, overrides)


DOCUMENTED = [pytest.param(command, id=f"{page.relative_to(ROOT)}:{number}")
              for page in PAGES for number, command in documented_commands(page.read_text())]


@pytest.mark.parametrize("command", DOCUMENTED)
def test_every_documented_command_parses_and_its_recipe_overrides_are_recipe_fields(command, capsys):
    try:
        check_command(command)
    except SystemExit as exc:  # argparse's own message, as a user would see it
        pytest.fail(f"`{command}` does not parse (exit {exc.code}): {capsys.readouterr().err.strip()}")
    except Exception as exc:
        pytest.fail(f"`{command}` is refused: {exc}")


def test_the_readme_and_docs_show_commands_of_several_subcommands():
    subcommands = {tinyae_argv(command)[0] for command in (p.values[0] for p in DOCUMENTED)}
    assert len(DOCUMENTED) >= 20
    assert {"distill", "export", "push", "evaluate", "bench", "study", "cache-latents"} <= subcommands <= set(COMMANDS)
    readme = documented_commands((ROOT / "README.md").read_text())
    number, first = readme[0]  # the smoke command comes first
    assert (number, tinyae_argv(first)) == (4, ["distill", "--recipe", "smoke", "--output", "runs/smoke"])


def test_commands_are_read_from_code_blocks_with_continuations_and_shell_lines_skipped():
    markdown = "\n".join([
        "`tinyae distill --not-in-a-block`",
        "```bash",
        "pip install -e . && tinyae distill --recipe smoke --output runs/smoke   # comment",
        "cd somewhere",
        "git status",
        "accelerate launch --multi_gpu --num_processes 2 scripts/distill.py --teacher sd \\",
        "    --data DIR --train.steps 20 --data.final_steps 0",
        "accelerate launch -m tinyae export --student runs/sd/student --to taesd",
        "python -m tinyae bench --threads 2",
        "python scripts/cache_latents.py --out cache/x --data DIR",
        "# tinyae distill --in-a-comment",
        "```",
    ])
    commands = documented_commands(markdown)
    assert [number for number, _ in commands] == [3, 6, 8, 9, 10]
    assert [tinyae_argv(command) for _, command in commands] == [
        ["distill", "--recipe", "smoke", "--output", "runs/smoke"],
        ["distill", "--teacher", "sd", "--data", "DIR", "--train.steps", "20", "--data.final_steps", "0"],
        ["export", "--student", "runs/sd/student", "--to", "taesd"],
        ["bench", "--threads", "2"],
        ["cache-latents", "--out", "cache/x", "--data", "DIR"],
    ]
    for _, command in commands:
        check_command(command)


@pytest.mark.parametrize("command", [
    "tinyae export --studnet runs/sd/student",  # a misspelt option
    "tinyae bench --repeats three",  # a value of the wrong type
    "tinyae distill --train.stepz 20",  # a recipe field that does not exist
    "tinyae distill --train.steps twenty",  # a recipe value of the wrong type
    "tinyae cache-latents --out cache/x --data.crop_scale huge",  # outside a field's choices
    "tinyae study --kodak KODAK --loss.adv_loss softplus",  # the study's overrides are checked too
    "accelerate launch --num_procesess 2 scripts/distill.py --teacher sd",  # accelerate's own options too
])
def test_a_command_the_cli_would_refuse_fails_the_check(command, capsys):
    with pytest.raises((SystemExit, TinyaeError)):
        check_command(command)


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    inside = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        if inside or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold code, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading '#{anchor}' in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"

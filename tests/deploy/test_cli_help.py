"""`hap --help` and every `hap COMMAND --help`: each subcommand says what it does (without importing
its module), each flag what it does and its default, and `hap --version` the package's version."""

import argparse
import importlib.metadata
import subprocess
import sys

from deploy.cli import SUBCOMMANDS, SUMMARIES, HelpFormatter, build_parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def summaries(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help for a in sub._choices_actions}


def undocumented(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags and arguments of ``parser`` without help, and the options taking a value whose help
    (as `--help` renders it) states no default."""
    formatter = HelpFormatter(f"hap {name}")
    found = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.help == argparse.SUPPRESS:
            continue
        label = f"hap {name} {'/'.join(action.option_strings) or action.dest}"
        if not (action.help or "").strip():
            found.append(f"{label}: no help")
        elif action.option_strings and action.nargs != 0 and not action.required \
                and "default" not in formatter._get_help_string(action).lower():
            found.append(f"{label}: no default shown")
    return found


def test_every_subcommand_has_a_summary_and_every_flag_help_with_its_default():
    parser = build_parser()  # every module imported: the real subparsers
    subs = subparsers(parser)
    assert set(subs) == set(SUBCOMMANDS) | {"stack"} == set(SUMMARIES)
    assert all(summaries(parser)[name] == SUMMARIES[name] and SUMMARIES[name].strip() for name in subs)
    assert [problem for name, p in subs.items() for problem in undocumented(name, p)] == []


def test_the_walk_finds_a_flag_without_help_or_default():
    p = argparse.ArgumentParser()
    p.add_argument("--bare", type=int)
    p.add_argument("--silent", type=int, help="a count")
    p.add_argument("--shown", type=int, default=3, help="a count")
    p.add_argument("--said", type=int, help="a count (default: the setting)")
    p.add_argument("--switch", action="store_true", help="on or off")
    assert undocumented("x", p) == ["hap x --bare: no help", "hap x --silent: no default shown"]


def test_hap_help_lists_each_summary_without_importing_the_components():
    code = ("import sys; from deploy.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'faust', 'aiohttp', 'deploy.commands.learner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines()[-1] == "[]"
    listed = " ".join(out.stdout.split())
    assert "(see `hap" not in listed
    for summary in SUMMARIES.values():
        assert " ".join(summary.split()) in listed
    # the stubs `hap --help` shows are the real parsers' lines
    assert summaries(build_parser("stack")) == summaries(build_parser())


def test_a_module_that_spells_its_own_help_line_is_refused():
    stubs = build_parser("stack")
    action = next(a for a in stubs._actions if isinstance(a, argparse._SubParsersAction))
    try:
        action.add_parser("models", help="another line")
    except ValueError as exc:
        assert "SUMMARIES" in str(exc)
    else:
        raise AssertionError("a second spelling of a summary was accepted")


def test_hap_version_is_the_installed_package_version():
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "--version"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == f"hap {importlib.metadata.version('hap-prerank')}"

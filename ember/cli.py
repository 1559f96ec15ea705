"""The `ember` command: one argparse parser, one small handler per subcommand.

A handler takes the parsed arguments and returns an exit code. main() turns every EmberError
into `error: <message>` on stderr with exit code 1, so users never see a traceback for a
problem they can fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ember.errors import EmberError, RegistryError


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if arguments[:2] == ["bench", "serve"]:
        # `ember bench [MODEL]` keeps its optional positional model, so the serving benchmark is
        # picked by the word itself rather than by an argparse sub-command under `bench`.
        from ember.cli_generate import build_bench_serve_parser

        parser, arguments = build_bench_serve_parser(), arguments[2:]
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.handler(args)
        return code
    except EmberError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`ember list | head`); nothing left to say
        _silence_stdout()
        return 141
    except OSError as exc:  # disk full, permission denied, ... outside any registry wrapper
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in Ember: still one line, the traceback only on request
        from ember.envs import debug

        if debug():
            raise
        print(
            f"error: internal error ({type(exc).__name__}: {exc}); "
            "rerun with EMBER_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return 1


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember", description="Ember: run GGUF and Hugging Face language models on the CPU."
    )
    parser.add_argument("--version", action="version", version=f"ember {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_pull(commands)
    _add_list(commands)
    _add_rm(commands)
    _add_show(commands)
    from ember.cli_generate import add_commands
    from ember.cli_serve import add_command as add_serve

    add_commands(commands)
    add_serve(commands)
    return parser


# --- pull ----------------------------------------------------------------------------------


def _add_pull(commands: Any) -> None:
    from ember.registry.library import DEFAULT_MODEL

    command = commands.add_parser("pull", help="download a model from the library (or hf:...)")
    command.add_argument(
        "name", nargs="?", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})"
    )
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    command.set_defaults(handler=_cmd_pull)


def _cmd_pull(args: argparse.Namespace) -> int:
    from ember.registry import cache, library, resolve_model
    from ember.registry.pull import pull_entry

    if args.name.startswith("hf:"):
        source = resolve_model(args.name)
        print(f"{source.name}: {source.path}")
        return 0
    if library.find_entry(args.name) is None and Path(args.name).expanduser().exists():
        raise RegistryError(f"{args.name} is a local model; it needs no pull")
    entry = library.get_entry(args.name)
    was_pulled = cache.read_manifest(entry.name) is not None
    path = pull_entry(entry, progress=not args.quiet)
    state = "up to date" if was_pulled else "pulled, sha256 verified"
    print(f"{entry.name}: {state} ({_size(entry.size)}) {path}")
    return 0


# --- list ----------------------------------------------------------------------------------


def _add_list(commands: Any) -> None:
    command = commands.add_parser("list", aliases=["ls"], help="list pulled models")
    command.add_argument(
        "--available", action="store_true", help="list the models the library can pull"
    )
    command.set_defaults(handler=_cmd_list)


def _cmd_list(args: argparse.Namespace) -> int:
    from ember.registry import DEFAULT_MODEL, LIBRARY, list_models

    pulled = {manifest.alias: manifest for manifest in list_models()}
    if args.available:
        rows = [
            [
                entry.name,
                _size(entry.size),
                "yes" if entry.name in pulled else "no",
                entry.description + (" (default)" if entry.name == DEFAULT_MODEL else ""),
            ]
            for entry in LIBRARY
        ]
        _print_table(["NAME", "SIZE", "PULLED", "DESCRIPTION"], rows)
        return 0
    if not pulled:
        print(f"no models pulled yet; `ember pull {DEFAULT_MODEL}` gets the default model")
        return 0
    rows = [
        [m.alias, _size(m.size), _local_time(m.pulled_at), m.sha256[:12]] for m in pulled.values()
    ]
    _print_table(["NAME", "SIZE", "PULLED", "SHA256"], rows)
    return 0


# --- rm ------------------------------------------------------------------------------------


def _add_rm(commands: Any) -> None:
    command = commands.add_parser("rm", help="delete pulled models")
    command.add_argument("names", nargs="+", metavar="NAME")
    command.set_defaults(handler=_cmd_rm)


def _cmd_rm(args: argparse.Namespace) -> int:
    from ember.registry import remove

    for name in args.names:
        folder = remove(name)
        print(f"removed {folder.name}")
    return 0


# --- show ----------------------------------------------------------------------------------


def _add_show(commands: Any) -> None:
    command = commands.add_parser("show", help="describe a model (alias, .gguf file or folder)")
    command.add_argument("name")
    command.add_argument("--template", action="store_true", help="print only the chat template")
    command.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from ember.registry import chat_template, show

    if args.template:
        template = chat_template(args.name)
        if template is None:
            raise RegistryError(f"{args.name} has no chat template")
        print(template)
        return 0
    for key, value in show(args.name).items():
        print(f"{key.replace('_', ' ')}: {_show_value(key, value)}")
    return 0


def _show_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "parameters":
        return _count(value)
    if key == "file_size":
        return _size(value)
    if isinstance(value, dict):
        return ", ".join(f"{name} x {count}" for name, count in value.items()) or "-"
    return str(value)


# --- formatting ----------------------------------------------------------------------------


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _local_time(iso: str) -> str:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _count(number: int) -> str:
    for divisor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= divisor:
            return f"{number / divisor:.2f}{suffix}"
    return str(number)


def _version() -> str:
    from ember import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())

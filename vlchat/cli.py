"""The `vlchat` command. Imports nothing heavy at module level: `vlchat --help` must not wait for torch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from vlchat import __version__

EXIT_OK, EXIT_MODEL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit 2, like every other vlchat error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        help="a named model (see `vlchat models`), a Hugging Face hub id (llava-hf/llava-1.5-7b-hf) "
        "or a local model folder (default: demo); "
        "with --endpoint, the model's name as the server knows it (default: the server's only model)",
    )
    group.add_argument(
        "--quant",
        choices=("auto", "4bit", "8bit", "none"),
        help="weights quantization with bitsandbytes; auto (default) is 4bit on CUDA, none elsewhere",
    )
    group.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cuda, mps or cpu")
    group.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), help="compute dtype")
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow a model's own Python code to run (off unless you pass this)",
    )


def _add_server_options(parser: argparse.ArgumentParser, *, pictures: bool = True, many_endpoints: bool = False) -> None:
    group = parser.add_argument_group("server (a model served by vLLM, Ollama or llama.cpp)")
    group.add_argument(
        "--endpoint",
        metavar="URL",
        action="append" if many_endpoints else "store",
        help="URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1 (or VLCHAT_ENDPOINT)"
        + ("; give it again for more servers: the pictures are spread over them" if many_endpoints else ""),
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help="the server's API key; VLCHAT_API_KEY keeps it out of your shell history. Never saved or shown",
    )
    if pictures:
        group.add_argument(
            "--image-max-side",
            type=int,
            metavar="PX",
            help="shrink pictures to at most PX pixels a side before sending them (default: as they are)",
        )
    group.add_argument("--connect-timeout", type=float, metavar="S", help="seconds to wait for a connection (default 10)")
    group.add_argument(
        "--token-timeout", type=float, metavar="S", help="seconds to wait for the next piece of the answer (default 120)"
    )
    group.add_argument(
        "--answer-timeout", type=float, metavar="S", help="seconds a whole answer may take (default 1800)"
    )


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, metavar="N", help="longest answer (default 512)")
    group.add_argument("--temperature", type=float, metavar="T", help="0 is greedy (default)")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (default 1: off)")
    group.add_argument("--seed", type=int, help="make sampled answers repeatable (0 to 4294967295)")
    group.add_argument("--system", metavar="TEXT", help="a system prompt")


def _add_sessions_dir(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # On the top parser and on each sub-command, so it works before or after the command name;
    # the sub-command's copy only speaks when given (SUPPRESS), never undoing the top one.
    parser.add_argument(
        "--sessions-dir",
        metavar="DIR",
        default=None if top else argparse.SUPPRESS,
        help="where sessions are kept (default: the user data folder; also $VLCHAT_SESSIONS_DIR)",
    )


SUBCOMMANDS = ("ask", "caption", "demo", "sessions", "export", "models")

_USAGE = (
    "vlchat [IMAGE...] [options]          open the app on these pictures\n"
    "       vlchat demo [options]                the app on the demo model and a sample picture\n"
    "       vlchat ask [IMAGE...] QUESTION [options]  one answer, streamed to stdout\n"
    "       vlchat caption DIR_OR_FILE... -o captions.jsonl  a caption for every picture\n"
    "       vlchat sessions | vlchat export SESSION  saved conversations\n"
    "       vlchat models [--endpoint URL]       the models you can use"
)


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("app")
    group.add_argument("--theme", metavar="NAME", help="colour theme: vlchat-dark (default), vlchat-light, vlchat-contrast or your own")
    group.add_argument(
        "--image-protocol",
        choices=("auto", "kitty", "sixel", "halfblock", "text", "none"),
        help="how pictures are drawn (default auto: kitty or sixel when the terminal has them, else half-blocks)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The sub-commands' parser (`vlchat ask ...`, `vlchat demo ...`)."""
    parser = _Parser(
        prog="vlchat",
        usage=_USAGE,
        description="Conversations about pictures with local vision-language models, in the terminal.",
        epilog="Try it with the bundled demo model: vlchat demo",
    )
    parser.add_argument("--version", action="version", version=f"vlchat {__version__}")
    parser.add_argument(
        "--print-config", action="store_true", help="show the effective settings and where each came from"
    )
    _add_sessions_dir(parser, top=True)
    # prog given: otherwise argparse builds the sub-commands' names from the multi-line usage.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, prog="vlchat")

    ask = commands.add_parser(
        "ask",
        usage="vlchat ask [IMAGE...] QUESTION [options]",
        help="answer one question about pictures, streamed to stdout",
        description="Answer one question about one or more pictures; the answer streams to stdout. "
        "One question per ask, after all its pictures; follow up with --session.",
    )
    ask.add_argument("items", nargs="+", metavar="[IMAGE...] QUESTION",
                     help="pictures, then one question (the last argument); an argument that names "
                     "a picture (PATH.jpg, dir/name) must exist")
    ask.add_argument("--json", action="store_true", help="print one JSON record instead of streaming text")
    ask.add_argument(
        "--session",
        metavar="NAME|ID|PATH|new",
        help="keep the conversation in a session: 'new' starts one, else continue the one named: "
        "a title or part of one (the most recent if several fit), an id (at least its first 4 "
        "characters) or a folder (each ask adds a turn and saves it)",
    )
    _add_sessions_dir(ask)
    _add_model_options(ask)
    _add_server_options(ask)
    _add_generation_options(ask)

    from vlchat.commands.caption import add_caption_parser

    add_caption_parser(commands, _add_model_options, _add_server_options, _add_generation_options)

    models = commands.add_parser(
        "models",
        help="the named models: hub id, family, 4-bit memory, downloaded or not (with --endpoint: the ones that server serves)",
        description="List the named models (hub id, family, memory at 4-bit, downloaded or not) and the other "
        "image-text-to-text models in the local Hugging Face cache; with --endpoint, the models that server serves.",
    )
    models.add_argument("--json", action="store_true", help="one JSON record per model")
    _add_server_options(models, pictures=False)

    sessions = commands.add_parser(
        "sessions",
        help="list saved sessions: title, updated, turns, pictures, model, id",
        description="List the saved sessions, most recent first.",
    )
    sessions.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    _add_sessions_dir(sessions)

    export = commands.add_parser(
        "export",
        help="write a session as a Markdown transcript, with its pictures beside it",
        description="Write a session as Markdown (FILE) with its pictures in FILE's stem + '_assets/'.",
    )
    export.add_argument("session", nargs="?", metavar="SESSION",
                        help="title, id (or its first letters) or folder; default: the most recent")
    export.add_argument("-o", "--output", metavar="FILE", help="where to write (default: the title as FILE.md here)")
    export.add_argument("--force", action="store_true", help="replace FILE even if it is not an earlier vlchat export")
    _add_sessions_dir(export)

    demo = commands.add_parser(
        "demo",
        help="open the app on the bundled demo model and a sample picture",
        description="Open the app with the bundled demo model (it knows colours and shapes) and a sample picture.",
    )
    demo.add_argument("images", nargs="*", metavar="IMAGE", help="pictures instead of the bundled sample")
    _add_sessions_dir(demo)
    _add_generation_options(demo)
    _add_app_options(demo)
    return parser


def build_app_parser() -> argparse.ArgumentParser:
    """`vlchat [IMAGE...]`: argparse cannot mix a positional list with sub-commands, so the command
    line is sent here unless its first word names a sub-command."""
    parser = _Parser(
        prog="vlchat",
        usage=_USAGE,
        description="Conversations about pictures with local vision-language models, in the terminal.\n"
        "With pictures (or none), opens the app.",
        epilog="commands:\n  ask       answer one question about pictures, streamed to stdout (vlchat ask --help)\n"
        "  caption   a caption for every picture in folders, to JSON lines (vlchat caption --help)\n"
        "  demo      open the app on the bundled demo model and a sample picture\n"
        "  sessions  list saved sessions\n"
        "  export    write a session as Markdown with its pictures\n"
        "  models    the named models, downloaded or not (--endpoint URL: the ones a server serves)\n\n"
        "Try it with the bundled demo model: vlchat demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vlchat {__version__}")
    parser.add_argument(
        "--print-config", action="store_true", help="show the effective settings and where each came from"
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="pictures to talk about (more can be added in the app with /image)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="NAME|ID|PATH",
        help="continue a saved session: a title, an id (or its first letters) or a folder; "
        "no value: the most recent",
    )
    _add_sessions_dir(parser, top=True)
    _add_model_options(parser)
    _add_server_options(parser)
    _add_generation_options(parser)
    _add_app_options(parser)
    return parser


def _names_subcommand(argv: list[str]) -> bool:
    """Whether the first word after the options every command shares (`vlchat --sessions-dir DIR
    sessions`) is a sub-command; anything else opens the app."""
    i = 0
    while i < len(argv):
        if argv[i] == "--sessions-dir":
            i += 2
        elif argv[i] == "--print-config" or argv[i].startswith("--sessions-dir="):
            i += 1
        else:
            break
    return i < len(argv) and argv[i] in SUBCOMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    from vlchat.core.errors import VlchatError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if _names_subcommand(argv):
            args = build_parser().parse_args(argv)
        else:
            args = build_app_parser().parse_args(argv)
            args.command = None
        if args.print_config:
            from vlchat.config import config_file, describe_settings, settings_from

            settings, sources = settings_from(args)
            print(f"# config file: {config_file()}")
            print(describe_settings(settings, sources))
            from vlchat.ui.terminal import detect

            # The same one probe the app makes at start (on a terminal only; nothing is left in the input).
            try:
                graphics = detect(settings.image_protocol)
            except VlchatError:
                graphics = detect("auto")  # the bad image_protocol is shown above, as it is set
            print(f"# pictures: {graphics.protocol} ({graphics.reason})")
            print(f"# paste: {graphics.paste.describe()}")
            return EXIT_OK
        if args.command == "ask":
            from vlchat.commands.ask import run_ask

            return run_ask(args)
        if args.command == "caption":
            from vlchat.commands.caption import run_caption

            return run_caption(args)
        if args.command == "models":
            from vlchat.commands.models import run_models

            return run_models(args)
        if args.command == "sessions":
            from vlchat.commands.sessions import run_sessions

            return run_sessions(args)
        if args.command == "export":
            from vlchat.commands.sessions import run_export

            return run_export(args)
        from vlchat.commands.app import run_app

        return run_app(args, demo=args.command == "demo")
    except UsageError as error:
        print(f"vlchat: error: {_shown(error)}", file=sys.stderr)
        return EXIT_USAGE
    except VlchatError as error:
        print(f"vlchat: error: {_shown(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if os.environ.get("VLCHAT_DEBUG"):
            import traceback

            traceback.print_exc()
        print("\nvlchat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) went away; nothing more to say, and nothing to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("VLCHAT_DEBUG"):
            raise
        from vlchat.core.text import clean

        print(
            f"vlchat: internal error: {type(error).__name__}: {clean(str(error), keep_newlines=False)}. "
            "Run again with VLCHAT_DEBUG=1 for the traceback, and please report it.",
            file=sys.stderr,
        )
        return EXIT_MODEL


def _shown(error: Exception) -> str:
    from vlchat.core.text import clean

    return clean(str(error), keep_newlines=False)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""Markdown transcripts of a session, with their pictures copied into an assets folder beside the file.

The transcript reads well in a pager (`less`, `cat`) and renders on GitHub: a title, a short header
(session id, model(s), date, parameters), then one section per turn with the question, its pictures
(linked by relative path), and each answer under a heading that names the model that wrote it.
Answers are kept verbatim (their Markdown and code blocks too), only stripped of control characters.

The output depends on the session alone (no "exported at" time), so exporting twice gives the same
bytes. A file that is not a previous vlchat export is never overwritten unless ``force`` is given.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from vlchat.core.conversation import GenerationParams, Message
from vlchat.core.errors import InputError
from vlchat.core.safe_files import atomic_write, shown_path
from vlchat.core.session_folder import Session
from vlchat.core.session_format import parse_iso
from vlchat.core.text import clean

MARKER = "<!-- vlchat export of session "
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class ExportError(InputError):
    """The transcript cannot be written where asked."""


@dataclass
class ExportResult:
    path: Path
    assets_dir: Path
    pictures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # stored pictures whose bytes no longer match their sha256


def default_name(session: Session) -> str:
    """A file name from the title: lowercase words joined by hyphens, e.g. what-colour-is-the-shape.md."""
    slug = re.sub(r"[^a-z0-9]+", "-", session.title.lower()).strip("-")[:50].rstrip("-")
    return f"{slug or 'session-' + session.id}.md"


def assets_dir_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}_assets")


def _safe_stem(name: str) -> str:
    stem = os.path.splitext(name)[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:40] or "picture"


def _when(iso: str) -> str:
    return parse_iso(iso).strftime("%Y-%m-%d %H:%M UTC")


def _params(params: GenerationParams) -> str:
    seed = "none" if params.seed is None else str(params.seed)
    return (
        f"max_new_tokens {params.max_new_tokens}, temperature {params.temperature:g}, "
        f"top_p {params.top_p:g}, seed {seed}"
    )


def _text(text: str) -> str:
    """Answer text as written, without control characters, and with any code fence it left open closed.

    A stopped answer often ends inside a code block; left open, the fence would swallow the rest of
    the transcript on GitHub.
    """
    text = clean(text).strip("\n")
    open_fence: str | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not match:
            continue
        fence = match.group(1)
        if open_fence is None:
            open_fence = fence
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not line.strip()[len(fence):].strip():
            open_fence = None
    if open_fence is not None:
        text += "\n" + open_fence
    return text


def _alt(name: str) -> str:
    return re.sub(r"([\[\]\\])", r"\\\1", name)


def plan_assets(session: Session) -> dict[str, str]:
    """sha256 -> file name in the assets folder, numbered in the order the pictures first appear."""
    names: dict[str, str] = {}
    order = [ref.sha256 for ref in session.conversation.images()] + list(session.pictures)
    for sha in order:
        if sha in names or sha not in session.pictures:
            continue
        picture = session.pictures[sha]
        ext = picture.file.rsplit(".", 1)[-1]
        names[sha] = f"{len(names) + 1:02d}-{_safe_stem(picture.name)}.{ext}"
    return names


def render(session: Session, assets_link: str, asset_names: dict[str, str], missing: set[str],
           changed: set[str] = frozenset()) -> str:
    """The transcript as Markdown text; ``assets_link`` is the assets folder as seen from the file.

    A picture in ``changed`` (its stored bytes no longer hash to its sha256) is left out and said so.
    """
    lines: list[str] = [f"# {clean(session.title, keep_newlines=False)}", ""]
    models = list(dict.fromkeys(m.model for m in session.conversation.messages if m.role == "assistant" and m.model))
    if not models and session.model.get("name"):
        models = [str(session.model["name"])]
    models = [clean(m, keep_newlines=False) for m in models]
    lines.append(f"- **Session:** `{session.id}`")
    if models:
        lines.append(f"- **{'Models' if len(models) > 1 else 'Model'}:** {', '.join(models)}")
    if session.model.get("endpoint"):
        lines.append(f"- **Server:** {clean(str(session.model['endpoint']), keep_newlines=False)}")
    date = _when(session.created)
    if _when(session.updated) != date:
        date += f" (last updated {_when(session.updated)})"
    lines.append(f"- **Date:** {date}")
    lines.append(f"- **Parameters:** {_params(session.params)}")
    lines.append(f"- **Turns:** {session.turns}, **pictures:** {len(session.pictures)}")
    if session.conversation.system:
        lines += ["", "**System prompt:**", ""]
        lines += [f"> {line}" if line else ">" for line in _text(session.conversation.system).split("\n")]

    turn = 0
    answered = True
    messages = [m for m in session.conversation.messages if m.role != "system"]
    for index, message in enumerate(messages):
        if message.role == "user":
            turn += 1
            lines += ["", "---", "", f"## Turn {turn}", "", "### User", ""]
            for ref in message.images:
                picture = session.pictures.get(ref.sha256)
                name = picture.name if picture else ref.sha256[:12]
                if ref.sha256 in changed:
                    lines += [f"*(picture left out: {name} in the session no longer matches its sha256)*", ""]
                elif ref.sha256 in missing or ref.sha256 not in asset_names:
                    lines += [f"*(picture missing from the session: {name})*", ""]
                else:
                    target = quote(f"{assets_link}/{asset_names[ref.sha256]}", safe="/")
                    lines += [f"![{_alt(name)}]({target})", ""]
            lines.append(_text(message.text))
            nxt = messages[index + 1] if index + 1 < len(messages) else None
            answered = nxt is not None and nxt.role == "assistant"
            if not answered:
                lines += ["", "*(no answer was saved for this question)*"]
        else:
            lines += ["", _assistant_heading(message), ""]
            if message.params and message.params != session.params:
                lines += [f"*Parameters: {_params(message.params)}*", ""]
            lines.append(_text(message.text) or "*(empty answer)*")
            if message.stopped:
                lines += ["", "*(stopped before the end of the answer)*"]
    pending = [sha for sha in asset_names if sha not in {r.sha256 for r in session.conversation.images()}]
    if pending:
        lines += ["", "---", "", "## Pictures attached but not asked about yet", ""]
        for sha in pending:
            name = session.pictures[sha].name
            if sha in changed:
                lines += [f"*(picture left out: {name} in the session no longer matches its sha256)*", ""]
            elif sha in missing:
                lines += [f"*(picture missing from the session: {name})*", ""]
            else:
                lines += [f"![{_alt(name)}]({quote(f'{assets_link}/{asset_names[sha]}', safe='/')})", ""]
        lines.pop()
    lines += ["", "---", "", f"{MARKER}{session.id}: exporting again replaces this file -->", ""]
    return clean("\n".join(lines))


def _assistant_heading(message: Message) -> str:
    model = clean(message.model or "unknown model", keep_newlines=False)
    return f"### Assistant ({model})"


_LAST_LINE = re.compile(rb"<!-- vlchat export of session ([0-9a-f]{12}): exporting again replaces this file -->\n?")


def _is_previous_export(path: Path) -> bool:
    """Whether ``path`` is a transcript vlchat wrote: it ends with the marker line, and its header
    names the same session. A file that only quotes the marker somewhere is someone else's."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a pipe there must not hang us
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        head = os.pread(fd, 4096, 0)
        tail = os.pread(fd, 512, max(0, info.st_size - 512))
    except OSError:
        return False
    finally:
        os.close(fd)
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1] + b"\n"
    match = _LAST_LINE.fullmatch(last)
    if match is None or not head.startswith(b"# "):
        return False
    return f"\n- **Session:** `{match.group(1).decode()}`\n".encode() in head


def export_markdown(session: Session, path: str | os.PathLike, *, force: bool = False) -> ExportResult:
    """Write the transcript to ``path`` and its pictures to ``<stem>_assets/`` beside it."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise ExportError(f"{shown_path(path)} is a folder", "give a file name such as transcript.md, or a path inside the folder")
    if path.suffix.lower() not in (".md", ".markdown"):
        path = path.with_name(path.name + ".md") if path.suffix == "" else path
    assets = assets_dir_for(path)
    shown = shown_path(path)
    if path.is_dir():
        raise ExportError(f"{shown} is a folder", "give a file name such as transcript.md, or a path inside the folder")
    ours = path.exists() and _is_previous_export(path)
    if not force:
        if path.exists() and not ours:
            raise ExportError(f"{shown} already exists and is not a vlchat export, so it is not overwritten",
                              "choose another name with -o, or add --force to replace it")
        if assets.exists() and not ours:
            raise ExportError(f"{clean(str(assets), keep_newlines=False)} already exists, so it is not overwritten",
                              "choose another name with -o, or add --force to replace it")
    if assets.exists() and not assets.is_dir():
        raise ExportError(f"{clean(str(assets), keep_newlines=False)} is a file, not a folder", "move it away or choose another name with -o")

    asset_names = plan_assets(session)
    missing = {sha for sha in asset_names if session.picture_path(sha) is None}
    # Each picture is read once, checked against its sha256 as `vlchat ask` checks it: a stored
    # file changed since it was attached is not exported as if it were the picture.
    contents = {sha: session.read_picture(sha) for sha in asset_names if sha not in missing}
    changed = {sha for sha, data in contents.items() if data is None}
    result = ExportResult(path=path, assets_dir=assets)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(missing) + len(changed) < len(asset_names):
            assets.mkdir(exist_ok=True)
        for sha, name in asset_names.items():
            if sha in missing:
                result.missing.append(session.pictures[sha].name)
                continue
            if sha in changed:
                result.changed.append(session.pictures[sha].name)
                continue
            target = assets / name
            data = contents[sha]
            if not (target.is_file() and not target.is_symlink() and target.read_bytes() == data):
                if target.is_symlink():
                    target.unlink()
                atomic_write(target, data, mode=0o644)
            result.pictures.append(target)
        link = os.path.relpath(assets, path.parent).replace(os.sep, "/")
        text = render(session, link, asset_names, missing, changed)
        atomic_write(path, text.encode("utf-8", "replace"), mode=0o644)
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise ExportError(
            f"could not write the transcript to {shown}: {clean(error.strerror or str(error), keep_newlines=False)}",
            "free some disk space, or choose another place with -o" if full else "choose another place with -o",
        ) from None
    return result

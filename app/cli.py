"""The `sessionkeeper` command line (also `python -m app`).

Every command accepts --json (before or after the command's name) and then prints exactly one
JSON object on stdout; logs go to stderr. The daemon's commands have no result to print: their
--json makes their log lines (on stdout) JSON. A mistake the user can fix ends with one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import anyio
import asyncpg
from pydantic import SecretStr

from app import package_version
from app.errors import ConfigError, LeaseHeld, UserError
from app.log import configure_logging, get_logger, redact, register_secret, register_url
from app.memory import limit_malloc_arenas
from app.progress import BarProgress, NullProgress, ProgressSink, wants_bar
from app.session_ids import check_session_id
from app.settings import Settings, load_settings
from app.snapshot.codec import load_chunker
from app.store import leases, repo
from app.store.db import open_pool
from app.store.repo import Conn
from app.targets import login_key_for
from app.tasks import sole_error
from app.vault.archive import export_generation
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.retention import prune
from app.vault.save import save_snapshot
from app.vault.sources import import_source, open_source

# A handler returns the JSON object to print, or an exit code (the daemon).
Handler = Callable[[argparse.Namespace, Settings], Awaitable[dict[str, Any] | int]]
Printer = Callable[[dict[str, Any]], None]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _session(value: str) -> str:
    try:
        return check_session_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def _progress(args: argparse.Namespace) -> AbstractContextManager[ProgressSink]:
    if wants_bar(args.json):
        return BarProgress()
    return nullcontext(NullProgress())


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Apply pending migrations, whatever SESSIONKEEPER_MIGRATE says (run it as the owner)."""
    settings = settings.model_copy(update={"migrate": True})
    async with open_pool(settings, max_size=1) as pool, pool.acquire() as conn:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return {"migrations": [f"{r['version']:04d}_{r['name']}" for r in rows]}


async def cmd_keygen(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """A new vault key for SESSIONKEEPER_ENCRYPTION_KEY (nothing is stored anywhere)."""
    from app.snapshot.sealing import VaultKey, generate_key  # noqa: PLC0415

    key = generate_key()
    if not args.json:
        print(key)  # alone on its line, for `export SESSIONKEEPER_ENCRYPTION_KEY=$(...)`
        return {}
    return {"key": key, "key_id": VaultKey.parse(key, "key").id}


async def cmd_rekey(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Re-seal the whole store under the new key (online, resumable: run it again)."""
    from app.snapshot.sealing import VaultKey  # noqa: PLC0415
    from app.vault.rekey import rekey_store  # noqa: PLC0415

    new_text = args.new_key or (settings.encryption_key.get_secret_value()
                                if settings.encryption_key else None)
    old_text = args.old_key or (settings.encryption_key_old.get_secret_value()
                                if settings.encryption_key_old else None)
    for text in (new_text, old_text):
        register_secret(text)
    if not new_text:
        raise ConfigError("rekey needs the new key: --new-key KEY or "
                          "SESSIONKEEPER_ENCRYPTION_KEY (`sessionkeeper keygen` prints one)")
    new = VaultKey.parse(new_text, "--new-key" if args.new_key else
                         "SESSIONKEEPER_ENCRYPTION_KEY")
    old = VaultKey.parse(old_text, "--old-key" if args.old_key else
                         "SESSIONKEEPER_ENCRYPTION_KEY_OLD") if old_text else None
    if old is not None and old.id == new.id:
        raise ConfigError("the old and the new key are the same key")
    # The pool opens the store with both keys (a wrong old key: one line, nothing touched).
    settings = settings.model_copy(update={
        "encryption_key": SecretStr(new_text),
        "encryption_key_old": SecretStr(old_text) if old_text else None})
    with _progress(args) as progress:
        async with open_pool(settings, max_size=2) as pool:
            result = await rekey_store(pool, new, old, progress)
    return result.as_json()


async def cmd_sessions(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """List sessions; `sessions add ID` / `sessions remove ID` for claim mode."""
    from app.store import leases  # noqa: PLC0415

    if args.action and not args.id:
        raise ConfigError(f"sessions {args.action} needs a session id")
    async with (open_pool(settings, max_size=1, read_only=not args.action) as pool,
                pool.acquire() as conn):
        if args.action == "add":
            await leases.register(conn, args.id, args.target)
            return {"session_id": args.id, "registered": True, "target": args.target}
        if args.action == "remove":
            if not await leases.unregister(conn, args.id):
                raise UserError(f"no session {args.id!r} in the database")
            return {"session_id": args.id, "registered": False}
        return {"sessions": await repo.list_sessions(conn)}


async def cmd_snapshots(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """List generations of a session."""
    async with open_pool(settings, max_size=1, read_only=True) as pool, pool.acquire() as conn:
        if not await repo.session_exists(conn, args.session):
            raise UserError(f"no session {args.session!r} in the database")
        gens = await repo.list_generations(conn, args.session)
    return {"session_id": args.session, "generations": [g.as_json() for g in gens]}


async def refuse_if_leased(conn: Conn, session_id: str, command: str, force: bool) -> None:
    """A write from the command line while a process holds the session's lease would race
    that owner: LeaseHeld, one line naming the holder; with force, a warning and go on."""
    held = await leases.holder(conn, session_id)
    if held.owner is None:
        return
    left = round(held.expires_in_s or 0, 1)
    if not force:
        raise LeaseHeld(f"session {session_id!r} is held by {held.owner} (lease token "
                        f"{held.token}, {left}s left): `{command}` would race it; stop that "
                        "process first, or pass --force")
    get_logger(session_id=session_id).warning("lease_overridden", command=command,
                                              holder=held.owner, fencing_token=held.token,
                                              expires_in_s=left)


async def _check_lease(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    async with pool.acquire() as conn:
        await refuse_if_leased(conn, args.session, args.command, args.force)


async def cmd_snapshot(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Snapshot a profile directory."""
    profile = args.profile or settings.profile_dir
    if not profile.is_dir():
        raise UserError(f"profile directory {profile} does not exist")
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, load_chunker)  # while the pool connects
        async with open_pool(settings) as pool:
            # Checked before the capture (nothing is uploaded in vain); the database checks
            # again at the commit, in case a process took the lease meanwhile.
            await _check_lease(pool, args)
            with _progress(args) as progress:
                result = await save_snapshot(pool, args.session, profile,
                                             VaultOptions.from_settings(settings),
                                             kind="manual", progress=progress,
                                             force=args.force)
    return result.as_json()


async def cmd_restore(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Restore a generation into a profile directory."""
    async with open_pool(settings, read_only=True) as pool:
        with _progress(args) as progress:
            result = await restore_profile(pool, args.session,
                                           args.profile or settings.profile_dir,
                                           generation=args.generation, progress=progress,
                                           rules=VaultOptions.from_settings(settings).rules)
    return result.as_json()


async def cmd_export(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Export a generation to a file."""
    async with open_pool(settings, read_only=True) as pool:
        with _progress(args) as progress:
            return await export_generation(pool, args.session, args.file,
                                           generation=args.generation, progress=progress)


async def cmd_import(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Import an export of ours, a whatsapp-web.js RemoteAuth zip (or its base64 text) or a
    LocalAuth folder as the session's newest generation."""
    options = VaultOptions.from_settings(settings)
    login_key = login_key_for(settings)
    # The source is read and checked before the database is opened: a hostile or mistaken
    # one changes nothing there.
    async with open_source(args.source, options.rules) as source, open_pool(settings) as pool:
        await _check_lease(pool, args)
        with _progress(args) as progress:
            return await import_source(pool, args.session, source, options,
                                       login_key=login_key, progress=progress,
                                       force=args.force)


async def cmd_prune(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Keep the newest N generations."""
    async with open_pool(settings) as pool:
        async with pool.acquire() as conn:
            if not await repo.session_exists(conn, args.session):
                raise UserError(f"no session {args.session!r} in the database")

        async def guard(conn: Conn) -> None:
            await refuse_if_leased(conn, args.session, "prune", args.force)

        return (await prune(pool, args.session, args.keep, guard)).as_json()


def _refuse_unconfirmed_delete(args: argparse.Namespace) -> None:
    """Off a terminal nobody can be asked: without --yes, one line and nothing is opened."""
    if not args.yes and not sys.stdin.isatty():
        raise ConfigError(f"delete asks for confirmation on a terminal; to delete session "
                          f"{args.session!r} and all its generations without asking, pass --yes")


async def _confirm_delete(session: dict[str, Any]) -> bool:
    """Ask on the terminal; only the session id typed back confirms (y would be too easy to
    give to the wrong question)."""
    count = session.get("generations") or 0
    size = float(session.get("bytes_stored") or 0) / 1e6
    sys.stderr.write(
        f"Delete session {session['session_id']!r}: {count} generation"
        f"{'' if count == 1 else 's'}, {size:.1f} MB stored? This cannot be undone.\n"
        "Type the session id to confirm: ")
    sys.stderr.flush()
    # Awaited, not read in a thread: Ctrl-C cancels the wait (a thread blocked in a read
    # would hold the process at exit). A terminal is readable once a whole line is typed.
    await anyio.wait_readable(sys.stdin)
    return bool(sys.stdin.readline().strip() == session["session_id"])


async def cmd_delete(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Delete a session and everything stored for it (asked first on a terminal)."""
    _refuse_unconfirmed_delete(args)
    async with open_pool(settings, max_size=1) as pool:
        if not args.yes:
            async with pool.acquire() as conn:
                found = [s for s in await repo.list_sessions(conn)
                         if s["session_id"] == args.session]
                if found and not args.force:  # held: said before anything is asked
                    await refuse_if_leased(conn, args.session, "delete", force=False)
            if not found:
                raise UserError(f"no session {args.session!r} in the database")
            if not await _confirm_delete(found[0]):
                raise UserError(f"delete cancelled: the answer was not {args.session!r}; "
                                "nothing deleted")
        async with pool.acquire() as conn, conn.transaction():
            await _delete_locked(conn, args)
    get_logger(session_id=args.session).info("session_deleted")
    return {"session_id": args.session, "deleted": True}


async def _delete_locked(conn: Conn, args: argparse.Namespace) -> None:
    # The row stays locked to the end: no process can take the lease in between.
    await repo.lock_session(conn, args.session)
    await refuse_if_leased(conn, args.session, "delete", args.force)
    if not await repo.delete_session(conn, args.session):
        raise UserError(f"no session {args.session!r} in the database")


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from app.supervisor import run_daemon  # noqa: PLC0415  (Playwright loads only here)

    return await run_daemon(settings)


def _exec_command(args: argparse.Namespace) -> list[str]:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("exec needs a command: sessionkeeper exec [--session ID] "
                          "[--profile DIR] -- CMD [ARGS...]")
    return command


async def cmd_exec(args: argparse.Namespace, settings: Settings) -> int:
    """Keep a session under a command that runs its own Chromium on the profile folder."""
    from app.supervisor import run_exec  # noqa: PLC0415

    return await run_exec(settings, _exec_command(args))


def _exec_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """--session and --profile over the environment's settings."""
    update: dict[str, Any] = {}
    if args.session:
        update["session_id"] = args.session
    if args.profile:
        update["profile_dir"] = args.profile
    return settings.model_copy(update=update)


def demo_settings(settings: Settings) -> Settings:
    """The demo target, with its own session and profile unless set explicitly."""
    update: dict[str, Any] = {"target": "demo"}
    if "session_id" not in settings.model_fields_set:
        update["session_id"] = "demo"
    if "profile_dir" not in settings.model_fields_set:
        update["profile_dir"] = settings.data_dir / "demo-profile"
    return settings.model_copy(update=update)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | int:
    """`demo`: the daemon on the demo site; `demo link [--code CODE]`: approve the QR code
    (or a pairing code) it shows; `demo unlink`: log its devices out from the "phone"."""
    if args.code is not None and args.action != "link":
        raise UserError("--code goes with `demo link`")
    if args.action == "link":
        body = {} if args.code is None else {"code": args.code}
        out = await _demo_post(settings.demo_port, "/api/link", body)
        if not out.get("linked"):
            raise UserError(f"the demo site refused the link: {out.get('error', out)}")
        return out
    if args.action == "unlink":
        return await _demo_post(settings.demo_port, "/api/unlink", {})
    return await cmd_run(args, demo_settings(settings))


async def _demo_post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the demo site on loopback; its JSON answer (whatever the status)."""
    import aiohttp  # noqa: PLC0415

    url = f"http://127.0.0.1:{port}{path}"
    try:
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
            out: dict[str, Any] = await response.json()
    except (aiohttp.ClientError, ValueError) as exc:
        raise UserError(f"no demo site at 127.0.0.1:{port} ({exc}); start `sessionkeeper demo` "
                        "first (SESSIONKEEPER_DEMO_PORT sets the port)") from None
    return out


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _print_human(command: str, out: dict[str, Any]) -> None:
    if command == "sessions" and "sessions" in out:
        _print_table(out["sessions"], ["session_id", "generations", "latest_generation",
                                       "latest_at", "bytes_stored", "registered", "owner"])
    elif command == "snapshots":
        _print_table(out["generations"], ["generation", "created_at", "kind", "login_state",
                                          "files", "bytes_raw", "bytes_uploaded"])
    else:
        for key, value in out.items():
            print(f"{key}: {value}")


class _Version(argparse.Action):
    """--version, read from the package's metadata only when asked (not at every start)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        print(f"sessionkeeper {package_version()}")
        parser.exit()


DESCRIPTION = """\
Keeps a headless Chromium session (WhatsApp Web, or any site you log in to) logged in across
container restarts: its profile is snapshotted into PostgreSQL while it runs and restored at
the next start, so a redeploy needs no new QR scan. Settings are environment variables
(DATABASE_URL, PORT, SESSIONKEEPER_*; see the README)."""

EPILOG = """\
examples:
  DATABASE_URL=postgresql://user:pw@host/db sessionkeeper run
                                    keep the session; the first time, scan the QR code it logs
  sessionkeeper demo                try it all on a bundled demo site, no phone needed
  sessionkeeper exec -- node bot.js keep the profile of a bot that runs its own Chromium
  sessionkeeper sessions            what is stored (--json: one JSON object, for scripts)
  sessionkeeper delete SESSION      asks first on a terminal; --yes elsewhere

`sessionkeeper COMMAND --help` says more about each command."""

class _TopHelp(argparse.RawDescriptionHelpFormatter):
    """The top-level help: our line breaks, each command's summary on its own line."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse sizes the name column without the commands' deeper indent, so the
            # longest name ("snapshots") would sit alone on its line.
            self._action_max_length += self._indent_increment


JSON_HELP = ("print exactly one JSON object on stdout (run, demo, exec: log lines as JSON); "
             "before or after the command")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = _Parser(prog="sessionkeeper", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=_TopHelp)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                title="commands")

    def add(name: str, handler: Handler, help_text: str,
            summary: str | None = None) -> argparse.ArgumentParser:
        """A command; `summary` is its line in the top-level help when help_text is long."""
        p = sub.add_parser(name, help=summary or help_text, description=help_text)
        # SUPPRESS: absent here, the value given before the command (or False) stands.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help=JSON_HELP)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the daemon: restore, keep Chromium logged in, snapshot, "
        "flush on SIGTERM", "the daemon: restore, keep logged in, snapshot")
    p = add("demo", cmd_demo, "the daemon on the bundled demo site and an embedded database; "
            "`demo link` approves the QR code it shows, like a phone scan; `demo unlink` logs "
            "its devices out, like the phone's 'Log out'",
            "try the daemon on a bundled demo site (`demo link`: the phone)")
    p.add_argument("action", nargs="?", choices=["link", "unlink"],
                   help="link: approve the QR code (or --code); unlink: log out every device")
    p.add_argument("--code", metavar="CODE",
                   help="with link: approve this pairing code (e.g. K7QD-9XWF) instead")
    p = add("exec", cmd_exec, "keep a session under a command that runs its own Chromium on "
            "the profile: restore, start CMD, snapshot while it runs, pass it SIGTERM/SIGINT, "
            "take a final snapshot when it exits, exit with its code",
            "run your bot (its own Chromium) and keep its session")
    p.add_argument("--session", type=_session,
                   help="the session to keep (default: SESSIONKEEPER_SESSION_ID)")
    p.add_argument("--profile", type=Path,
                   help="the profile folder CMD uses (default: SESSIONKEEPER_PROFILE_DIR)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="the command; it gets SESSIONKEEPER_PROFILE_DIR and "
                   "SESSIONKEEPER_SESSION_ID")
    add("migrate", cmd_migrate, "apply database migrations")
    add("keygen", cmd_keygen, "print a new vault key for SESSIONKEEPER_ENCRYPTION_KEY")
    p = add("rekey", cmd_rekey, "re-seal every stored profile under a new vault key (or seal "
            "a plaintext store), online and resumable; then set the new key everywhere",
            "re-seal the store under a new vault key")
    p.add_argument("--old-key", metavar="KEY",
                   help="the key the store is sealed with (default: "
                   "SESSIONKEEPER_ENCRYPTION_KEY_OLD; none for a plaintext store)")
    p.add_argument("--new-key", metavar="KEY",
                   help="the key to seal with (default: SESSIONKEEPER_ENCRYPTION_KEY)")
    p = add("sessions", cmd_sessions, "list sessions; `add ID` / `remove ID` register a "
            "session for replicas in claim mode (SESSIONKEEPER_MAX_SESSIONS)",
            "list sessions (add/remove: claim mode)")
    p.add_argument("action", nargs="?", choices=["add", "remove"])
    p.add_argument("id", nargs="?", type=_session)
    p.add_argument("--target", choices=["whatsapp", "demo", "custom"],
                   help="with add: the session's target (default: the replica's)")
    add("snapshots", cmd_snapshots, "list a session's generations").add_argument(
        "session", type=_session)
    p = add("snapshot", cmd_snapshot, "snapshot a profile directory into a session")
    p.add_argument("session", type=_session)
    p.add_argument("--profile", type=Path,
                   help="Chromium user-data-dir (default: SESSIONKEEPER_PROFILE_DIR)")
    p.add_argument("--force", action="store_true",
                   help="even while a process holds the session's lease (logged as a warning)")
    p = add("restore", cmd_restore, "restore a session into a profile directory")
    p.add_argument("session", type=_session)
    p.add_argument("--profile", type=Path,
                   help="Chromium user-data-dir (default: SESSIONKEEPER_PROFILE_DIR)")
    p.add_argument("--generation", type=_positive, help="a named generation (default: newest)")
    p = add("export", cmd_export, "write one generation to a portable file")
    p.add_argument("session", type=_session)
    p.add_argument("file", type=Path)
    p.add_argument("--generation", type=_positive, help="default: newest")
    p = add("import", cmd_import, "import SOURCE as a session's newest generation: a "
            "sessionkeeper export, a whatsapp-web.js RemoteAuth zip or its base64 text, or a "
            "LocalAuth folder (.wwebjs_auth or .wwebjs_auth/session[-ID])",
            "import an export, a RemoteAuth zip or a LocalAuth folder")
    p.add_argument("session", type=_session)
    p.add_argument("source", metavar="SOURCE",
                   help="a file or folder; - reads standard input (e.g. piped from psql)")
    p.add_argument("--force", action="store_true",
                   help="even while a process holds the session's lease (logged as a warning)")
    p = add("prune", cmd_prune, "keep the newest N generations, collect unused chunks")
    p.add_argument("session", type=_session)
    p.add_argument("--keep", type=_positive, required=True)
    p.add_argument("--force", action="store_true",
                   help="even while a process holds the session's lease (logged as a warning)")
    p = add("delete", cmd_delete, "delete a session and all its data; on a terminal it asks "
            "you to type the session id, elsewhere it needs --yes",
            "delete a session and all its data (asks first)")
    p.add_argument("session", type=_session)
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask (needed when standard input is not a terminal)")
    p.add_argument("--force", action="store_true",
                   help="even while a process holds the session's lease (logged as a warning)")
    return parser


def help_after_command(argv: Sequence[str], commands: Sequence[str]) -> list[str]:
    """`sessionkeeper --help delete` means `sessionkeeper delete --help`, as in git: a -h or
    --help before the command's name moves after it."""
    args = list(argv)
    for index, word in enumerate(args):
        if word == "--" or not word.startswith("-"):
            if word in commands:
                before = args[:index]
                helps = [t for t in before if t in ("-h", "--help")]
                if helps:
                    rest = [t for t in before if t not in ("-h", "--help")]
                    return [*rest, word, *helps, *args[index + 1:]]
            break
    return args


def _register_secrets(settings: Settings) -> None:
    """No log line or error line prints the database password, the HTTP token, the webhook
    URL or a vault key (app/log.py masks every registered value)."""
    for url in (settings.database_url, settings.webhook_url):
        register_url(url.get_secret_value() if url else None)
    for secret in (settings.http_token, settings.encryption_key, settings.encryption_key_old):
        register_secret(secret.get_secret_value() if secret else None)


def _error(text: str) -> None:
    """The one error line, with every registered secret and URL password masked."""
    sys.stderr.write(f"sessionkeeper: error: {redact(text)}\n")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run one command and exit with its status."""
    limit_malloc_arenas()
    # Everything this process writes (profile, staging, caches, markers, exports) is the
    # owner's alone: a profile is a logged-in device.
    os.umask(0o077)
    parser = build_parser()
    commands = next(a.choices for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction))
    args = parser.parse_args(help_after_command(sys.argv[1:] if argv is None else argv,
                                                list(commands)))
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        sys.exit(2)
    daemon = args.command in ("run", "demo", "exec") and getattr(args, "action", None) is None
    try:
        settings = load_settings()
        if args.command == "exec":
            settings = _exec_settings(args, settings)
        _register_secrets(settings)
        # The daemon logs to stdout (platforms show stderr as errors); commands keep stdout
        # for their output.
        # The daemon has no result to print: its --json is its log as JSON lines.
        log_format = "json" if daemon and args.json else settings.resolved_log_format()
        configure_logging(settings.log_level, log_format,
                          stream=sys.stdout if daemon else sys.stderr)
        out = anyio.run(args.handler, args, settings)
    except BaseException as raw:
        exc = sole_error(raw)
        if isinstance(exc, SystemExit):
            raise exc from None
        if isinstance(exc, KeyboardInterrupt):
            sys.stderr.write("sessionkeeper: interrupted\n")
            sys.exit(130)
        if isinstance(exc, UserError):
            _error(str(exc))
            sys.exit(exc.exit_code)
        if isinstance(exc, asyncpg.PostgresError | OSError):
            _error(f"{type(exc).__name__}: {exc}")
            sys.exit(1)
        _error(f"unexpected {type(exc).__name__}: {exc} (set SESSIONKEEPER_LOG_LEVEL=debug for "
               "the traceback)")
        get_logger().debug("unexpected_error", traceback="".join(traceback.format_exception(exc)))
        sys.exit(1)
    if isinstance(out, int):
        sys.exit(out)
    try:
        if args.json:
            print(json.dumps(out, default=str))
        else:
            _print_human(args.command, out)
    except (KeyError, TypeError, ValueError) as exc:  # a bug in printing, not the work
        sys.stderr.write(f"sessionkeeper: error: cannot print the result: {exc!r}\n")
        sys.exit(1)
    sys.exit(0)


__all__ = ["ConfigError", "build_parser", "main"]

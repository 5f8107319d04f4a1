"""What every console script shares: its config parsed by draccus, list flags that take ``a b``,
and an expected user error (a bad value, a missing or existing folder) ended in one last line
``error: <message>`` instead of a traceback. Unexpected exceptions keep their traceback.

``dispatch`` runs ``prog KIND [options]`` for the scripts with one kind per stage (reverie-train,
reverie-eval): each kind's module is imported only when that kind runs.

It lives in ``data/`` because reverie-collect, the lowest of the scripts, needs it, and
reverie-eval must not import training code to share it; it imports nothing heavy.
"""

import contextlib
import dataclasses
import importlib
import json
import logging
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import draccus
import yaml
from draccus.cfgparsing import parse_string
from draccus.utils import DecodingError, ParsingError

# Raised by a config's validation or when a run starts, on inputs the user chose.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
_SCALARS = (str, int, float, bool, Path)


def fail(message: str, code: int = 2) -> NoReturn:
    """Ends the process with ``error: <message>`` as the last line on stderr (2: a bad command line)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse[T](cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None) -> T:
    """``draccus.parse`` with list flags joined (see ``join_list_values``), nested defaults kept
    (see ``factory_defaults``) and a bad value as one line."""
    argv = join_list_values(cls, sys.argv[1:] if argv is None else list(argv))
    if "-h" in argv or "--help" in argv:
        help_parser(cls, prog).parser.print_help()
        raise SystemExit(0)
    try:
        with defaults_file(cls, argv) as (config_path, args):
            return draccus.parse(cls, config_path=config_path, args=args, prog=prog)
    except DecodingError as e:  # names the field: "`steps`: Couldn't parse 'abc' into an int"
        fail(str(e))
    except ParsingError as e:
        # A __post_init__ error arrives wrapped as "Couldn't instantiate class ..."; its cause names the field.
        cause = e.__cause__
        fail(str(cause) if isinstance(cause, USER_ERRORS) else f"{e} {cause or ''}".strip())
    except USER_ERRORS as e:  # draccus wraps only ValueError and TypeError
        fail(str(e))


def factory_defaults(cls: type) -> dict:
    """The settings that ``cls``'s fields' ``default_factory`` give their nested configs apart from
    those configs' own defaults, nested as in a config file.

    draccus rebuilds a nested config from its annotated class as soon as one of its fields is on
    the command line, so ``dataset: DatasetConfig = field(default_factory=lambda:
    DatasetConfig(cache_frames=True))`` lost ``cache_frames`` to ``--dataset.root X``. ``parse``
    hands these settings to draccus as the config file under the command line. Choice groups
    (``--algorithm.type``) keep their own defaults per choice and are left out."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if not _is_config(tp) or issubclass(tp, draccus.ChoiceRegistry):
            continue
        given = draccus.encode(f.default_factory()) if f.default_factory is not dataclasses.MISSING else {}
        plain = draccus.encode(tp())
        nested = factory_defaults(tp) | {k: v for k, v in given.items() if v != plain.get(k)}
        if nested:
            out[f.name] = nested
    return out


@contextlib.contextmanager
def defaults_file(cls: type, argv: list[str]):
    """(config file, remaining args) for draccus: ``factory_defaults(cls)`` under the user's own
    ``--config_path FILE`` (its settings win, as flags win over both), in a temporary file; no
    file where there is nothing to keep."""
    defaults = _without_given(cls, factory_defaults(cls), argv)
    user, args = None, list(argv)
    for i, token in enumerate(args):
        flag, eq, value = token.partition("=")
        if flag == "--config_path" and (eq or i + 1 < len(args)):
            user = value if eq else args[i + 1]
            del args[i:i + (1 if eq else 2)]
            break
    if not defaults:  # draccus reads the user's --config_path itself
        yield None, argv
        return
    if user is not None:
        text = Path(user).read_text()  # a missing file: FileNotFoundError, one line
        defaults = _merged(cls, defaults, (json.loads(text) if user.endswith(".json") else yaml.safe_load(text)) or {})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(defaults, file)
        file.flush()
        yield file.name, args


def _without_given(cls: type, defaults: dict, argv: list[str]) -> dict:
    """``defaults`` less the settings that a flag in ``argv`` gives (draccus would merge a dict
    flag into the file's dict, where the flag must replace it)."""
    out = json.loads(json.dumps(defaults))  # a deep copy
    for token in argv:
        path = token[2:].partition("=")[0].split(".") if token.startswith("--") else []
        node = out
        for depth, name in enumerate(path):
            if not isinstance(node, dict) or name not in node:
                break
            if depth == len(path) - 1 and not _names_a_config(cls, ".".join(path)):
                del node[name]  # a setting, not a group (``--env FILE`` keeps the group's defaults under it)
            node = node.get(name)
    return out


def help_parser(cls: type, prog: str | None = None):
    """draccus's parser of ``cls``, its help showing the defaults that ``factory_defaults`` keeps
    (draccus's help shows the nested class's own)."""
    from draccus.argparsing import ArgumentParser

    parser = ArgumentParser(cls, prog=prog)
    flat = _flattened(factory_defaults(cls))
    for action in actions_of(parser):
        if action.dest in flat and not _names_a_config(cls, action.dest):  # not "--expert: config file for expert"
            action.default = flat[action.dest]
    return parser


def _names_a_config(cls: type, dest: str) -> bool:
    """Whether the dotted field path ``dest`` of ``cls`` is a nested config (not a setting)."""
    tp = cls
    for name in dest.split("."):
        tp = typing.get_type_hints(tp).get(name) if _is_config(tp) else None
    return _is_config(tp)


def actions_of(parser) -> list:
    """Every argparse action of a draccus parser: its own and those of its groups (a nested config's)."""
    return parser.parser._actions + [a for group in parser.parser._action_groups for a in group._group_actions]


def _is_config(tp) -> bool:
    """Whether a field's type is a nested config (a dataclass), not a setting."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _flattened(settings: dict, prefix: str = "") -> dict:
    """{"a.b": value} of nested settings (a dict-valued setting as itself and as its keys)."""
    out = {}
    for k, v in settings.items():
        out[prefix + k] = v
        if isinstance(v, dict):
            out |= _flattened(v, f"{prefix}{k}.")
    return out


def _merged(cls: type, base: dict, over: dict) -> dict:
    """The settings ``over`` on ``base`` for config class ``cls``: nested configs merged field by
    field, any other value (a dict-valued field too) replaced."""
    hints, out = typing.get_type_hints(cls), dict(base)
    for k, v in over.items():
        tp = hints.get(k)
        group = _is_config(tp) and isinstance(out.get(k), dict)
        out[k] = _merged(tp, out[k], v) if group and isinstance(v, dict) else v
    return out


def run[T](fn: Callable[[T], typing.Any], cfg: T) -> typing.Any:
    """``fn(cfg)``, with Ctrl-C as exit code 130 and an expected user error as one line (exit code 1)."""
    try:
        return fn(cfg)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except USER_ERRORS as e:
        fail(str(e), code=1)


def usage(kinds: dict, prog: str) -> str:
    width = max(map(len, kinds))
    lines = [f"  {kind:<{width}}  {about}" for kind, (*_, about) in kinds.items()]
    return "\n".join([f"usage: {prog} KIND [options]", "", "kinds:", *lines, "",
                      f"a kind's options: {prog} KIND --help"])


def dispatch(kinds: dict, prog: str, argv: list[str] | None = None) -> None:
    """Runs ``prog KIND [options]``: parses the kind's config with draccus and calls its function.
    ``kinds``: kind -> (module, config class, function that runs it, one line on what it does)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(kinds, prog))
        return
    if not argv or argv[0] not in kinds:
        print(usage(kinds, prog), file=sys.stderr)
        fail(f"KIND is one of {sorted(kinds)}, got {repr(argv[0]) if argv else 'nothing'}")
    module_name, config_name, fn_name, _ = kinds[argv[0]]
    module = importlib.import_module(module_name)
    cfg = parse(getattr(module, config_name), argv[1:], prog=f"{prog} {argv[0]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(f"done: {run(getattr(module, fn_name), cfg)}")


def join_list_values(cls: type, argv: list[str]) -> list[str]:
    """``--views front wrist`` and ``--views=front`` as ``--views ["front", "wrist"]`` and ``--views ["front"]``.

    draccus reads each flag's value as one YAML string, so ``front`` decoded into a tuple of its
    letters and a second value was refused; its own ``nargs`` field option fails in 0.11 (it
    YAML-parses the list argparse returns). A single value that is already a YAML list or null
    (``[front,wrist]``, ``[]``, ``null``) is left as it is.
    """
    flags, out, i = list_flags(cls), [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        i += 1
        if not flag.startswith("--") or flag[2:] not in flags:
            out.append(argv[i - 1])
            continue
        values = [value] if eq else []
        while not eq and i < len(argv) and not _is_option(argv[i]):
            values.append(argv[i])
            i += 1
        if len(values) == 1 and _is_list_or_null(values[0]):
            out += [flag, values[0] or "[]"]  # "" meant the empty list before, when split into letters
        else:
            out += [flag, *([json.dumps(values)] if values else [])]
    return out


def list_flags(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of the fields of ``cls`` (nested configs too) typed as tuples or lists of scalars."""
    flags, hints = set(), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        for option in (o for o in options if o is not type(None)):
            if dataclasses.is_dataclass(option):
                flags |= list_flags(option, f"{prefix}{f.name}.")
            elif typing.get_origin(option) in (tuple, list) and all(
                    a is Ellipsis or a in _SCALARS for a in typing.get_args(option)):
                flags.add(prefix + f.name)
    return flags


def _is_list_or_null(value: str) -> bool:
    if value == "":
        return True
    try:
        return isinstance(parse_string(value), list | None)
    except yaml.YAMLError:  # not YAML at all (e.g. "[front"): a plain value, that decoding will name
        return False


def _is_option(token: str) -> bool:
    """``--flag`` or ``-h``, not a negative number."""
    try:
        float(token)
        return False
    except ValueError:
        return token.startswith("-")

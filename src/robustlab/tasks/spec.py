"""Evaluation specs: one registered dataclass per kind of evaluation.

A spec's fields are that evaluation's only defaults. The CLI options of its command are
generated from the fields (`add_options`, `from_args`), presets build it from a settings dict
(`from_settings`), and every result it writes says what it is (`make_result`: `kind`, `schema`,
the settings). The report, `robustlab table` and `robustlab info` find a result's spec through
`REGISTRY[result["kind"]]` (`spec_of`). Adding an evaluation = one spec class in one file
(`register` makes it a dataclass):

    @register
    class Clean(EvalSpec):
        kind: ClassVar[str] = "clean"
        n_test: int | None = option("n_test")

        def run(self, run, *, progress=None, name=None) -> dict: ...
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, ClassVar

from robustlab.errors import UserError, deprecated
from robustlab.tasks.vocabulary import VOCABULARY, Term

SCHEMA = 1  # version of the result layout written by `make_result`


def option(name: str | None = None, default: Any = dataclasses.MISSING, *, help: str | None = None,
           type: Callable[[str], Any] | None = None, metavar: str | None = None,
           choices: Collection[Any] | None = None, cli: bool = True, aliases: tuple[str, ...] = (),
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A spec field. `name` names a shared term of `VOCABULARY` (same flag, meaning, type and
    default in every command); without it, `help` (and `type`) describe a field of this spec
    only. `cli=False` keeps a field out of the command line (Python and presets only);
    `aliases` are old spellings, accepted with a one-line deprecation note."""
    term = VOCABULARY[name] if name is not None else None
    if term is not None:
        help = help or term.help
        type = type or term.type
        metavar = metavar or term.metavar
        choices = choices or term.choices
        aliases = aliases or term.aliases
        if default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
            if isinstance(term.default, (list, dict, set)):
                default_factory = lambda d=term.default: list(d)  # noqa: E731
            else:
                default = term.default
    if help is None:
        raise TypeError("a spec field needs a vocabulary name or a help text")
    meta = {"help": help, "type": type, "metavar": metavar, "choices": choices, "cli": cli,
            "aliases": tuple(aliases), "term": name}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class EvalSpec:
    """Base of every evaluation spec. Subclasses set `kind` and implement `run`."""

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""  # one line: what the evaluation measures
    requires: ClassVar[str] = ""  # a module that must be importable (else the spec is skipped)
    group: ClassVar[str] = "other"  # the report's section (`report.summary.SECTIONS`)
    names: ClassVar[tuple[str, ...]] = ()  # result names, beside `kind`, of unprefixed metrics
    # older settings keys (presets written with the evaluation functions' keywords) → fields:
    # accepted for one release with a one-line note; each class lists its own (merged along its
    # bases), beside the fields' old CLI spellings (`option(aliases=…)`)
    old_keys: ClassVar[dict[str, str]] = {}

    # ---- what every spec does ----------------------------------------------------------------
    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        """Evaluate an opened run (`robustlab.runs.Run`); the result body (no `kind`/settings)."""
        raise NotImplementedError

    def cost(self, n_test: int) -> float:
        """Rough cost in forward-backward passes of one image, for plans and progress."""
        return float(n_test)

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        """{metric name: value or report Metric} for the summary table; see report/summary.py."""
        return {}

    def prefix(self, name: str) -> str:
        """'' for a result stored under its kind's usual name (`kind`, `names`), else '<name>/'
        (a second suite `unseen.json`, `flatness-best.json`): what its metric names start with."""
        return "" if name == self.kind or name in self.names else f"{name}/"

    def setting_line(self, result: dict[str, Any]) -> str:
        """One line of what the result was measured on and how (n, attacks, steps, patterns),
        for the report's section headers; '' when there is nothing to say."""
        return ""

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        """Draw the result's figures into `folder`; the paths written."""
        return []

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """The report's figures of every result named `name` of this kind, one (run label,
        result) per model, drawn with `figs.make(title, caption, draw, size=, order=)`
        (`report.html.Figures`); they go to the section of the spec's `group`, sorted by
        `order` (0: the section's main comparison of the models, 1: further comparisons,
        2: distributions, 3: per-model images), then by result name. By default each result's
        own `figures(result, folder)`, titled '<title> (<name>, <run label>)'."""
        if cls.figures is EvalSpec.figures:
            return []
        out = []
        for label, result in items:
            title = f"{cls.title or cls.kind} ({name}, {label})"
            try:
                paths = cls.from_result(result).figures(result, figs.folder())
            except Exception as e:  # a broken figure must not take the whole report down
                figs.fail(title, e)
                continue
            for i, path in enumerate(p for p in paths if Path(p).suffix == ".png"):
                fig = figs.make(title if i == 0 else f"{title} [{i + 1}]", cls.title or cls.kind,
                                lambda dest, src=Path(path): dest.write_bytes(src.read_bytes()))
                if fig:
                    out.append(fig)
        return out

    def table(self, result: dict[str, Any]) -> str:
        """The terminal table printed by the command."""
        return ""

    def describe(self) -> str:
        """The Python call this spec stands for (shown in plans)."""
        kw = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({kw})"

    # ---- settings ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The field values, JSON-ready."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> EvalSpec:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, where: str = "") -> EvalSpec:
        """Build from a settings dict (a preset's): unknown keys are one-line errors; old
        spellings are accepted with a deprecation note."""
        return cls(**_check_keys(cls, dict(settings or {}), where or f"{cls.kind} settings"))

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> EvalSpec:
        """The spec that wrote `result` (its recorded settings, quietly: no deprecation notes),
        else the spec with its defaults, else a bare instance (for reading the result only)."""
        import contextlib
        import io

        settings = result.get("settings") if result.get("schema") is not None else None
        attempts = ([lambda: cls.from_settings(settings)] if isinstance(settings, dict) else [])
        for attempt in [*attempts, cls]:
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    return attempt()
            except (UserError, TypeError, ValueError):
                continue
        return cls.__new__(cls)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSpec:
        """Build from parsed options generated by `add_options`."""
        kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
        return cls(**kw)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def old_spellings(cls: type[EvalSpec]) -> dict[str, str]:
    """{older settings key: field} of a spec: its fields' old CLI spellings and the `old_keys`
    of the class and its bases (those naming one of its fields)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    old = {a.lstrip("-").replace("-", "_"): name for name, f in fields.items()
           for a in f.metadata.get("aliases", ())}
    for c in reversed(cls.__mro__):
        old.update({k: v for k, v in vars(c).get("old_keys", {}).items() if v in fields})
    return {k: v for k, v in old.items() if k not in fields}


def _check_keys(cls: type[EvalSpec], settings: dict[str, Any], where: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    old = old_spellings(cls)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # field → the key it was given as
    for key, value in settings.items():
        field = old.get(key, key)
        if field not in fields:
            raise UserError(f"{where}: unknown setting {key!r}; allowed: "
                            f"{', '.join(sorted(fields))}")
        if field in given:
            raise UserError(f"{where}: {given[field]!r} and {key!r} are the same setting; give "
                            f"only {field!r}")
        if field != key:
            deprecated(f"{where}: {key!r}", repr(field))
        given[field] = key
        out[field] = value
    return out


# ---- the registry ------------------------------------------------------------------------------

REGISTRY: dict[str, type[EvalSpec]] = {}
S = typing.TypeVar("S", bound=type[EvalSpec])


def register(cls: S) -> S:
    """Class decorator: make a spec a dataclass (its fields are its options; unless it is one
    already) and known to the CLI, presets, report and `info`."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} has no kind")
    if "__dataclass_fields__" not in vars(cls):
        cls = dataclasses.dataclass(cls)
    if cls.kind in REGISTRY and REGISTRY[cls.kind] is not cls:
        raise TypeError(f"evaluation kind {cls.kind!r} is registered twice")
    REGISTRY[cls.kind] = cls
    return cls


_CORE = {"__init__", "spec", "vocabulary"}


def load_all() -> dict[str, type[EvalSpec]]:
    """Import every spec module of the tasks package (one module a kind); the registry."""
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem not in _CORE and not path.stem.startswith("_"):
            importlib.import_module(f"robustlab.tasks.{path.stem}")
    return REGISTRY


def spec_class(kind: str) -> type[EvalSpec]:
    """The spec of a kind; a one-line error naming the kinds there are."""
    load_all()
    try:
        return REGISTRY[kind]
    except KeyError:
        raise UserError(f"unknown evaluation kind {kind!r}; choose one of "
                        f"{', '.join(sorted(REGISTRY))}") from None


def spec_of(result: dict[str, Any]) -> type[EvalSpec] | None:
    """The spec that wrote a result (its `kind`), or None for results of no registered kind."""
    load_all()
    return REGISTRY.get(str(result.get("kind") or result.get("evaluator") or ""))


def make_result(spec: EvalSpec, run: Any, body: dict[str, Any], *, seed: int | None = None
                ) -> dict[str, Any]:
    """A result dict that says what it is: kind, schema, the spec's settings, data and seed
    (`io.write_result` adds the versions)."""
    meta = getattr(run, "meta", None) or {}
    head = {"kind": spec.kind, "schema": SCHEMA, "settings": spec.settings()}
    if run is not None and getattr(run, "path", None) is not None:
        head["run"] = str(run.path)
    if meta.get("data") is not None:
        head["data"] = meta.get("data")
    if "trained_on" in meta:
        head["trained_on"] = meta["trained_on"]
    if seed is None:
        seed = getattr(spec, "seed", None)
    if seed is not None:
        head["seed"] = seed
    return {**head, **body}


# ---- command-line options generated from the fields --------------------------------------------

def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type[EvalSpec], *,
                skip: tuple[str, ...] = ()) -> None:
    """One option per CLI field of `cls`: `--field-name`, typed and documented by the field.
    Booleans that default to False are switches; those that default to True get `--no-…`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli", True) or f.name in skip:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (None if required else f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())
        names = [flag(f.name), *m.get("aliases", ())]
        help_text = m["help"]
        if hints.get(f.name) is bool or isinstance(default, bool):
            if default:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                                    action="store_false", help=help_text)
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=help_text)
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": _with_default(help_text,
                                                                                          default)}
        if required:  # a field without a default: a required option
            kw["required"] = True
        if m.get("type") is not None:
            kw["type"] = m["type"]
        if m.get("metavar"):
            kw["metavar"] = m["metavar"]
        if m.get("choices"):
            kw["choices"] = m["choices"]
        action = parser.add_argument(names[0], **kw)
        action.term = m.get("term")  # type: ignore[attr-defined]  # the vocabulary term it stands for
        for alias in names[1:]:
            parser.add_argument(alias, dest=f.name, type=kw.get("type"), default=argparse.SUPPRESS,
                                choices=kw.get("choices"), action=_Deprecated, new=names[0],
                                help=argparse.SUPPRESS)


def _with_default(help_text: str, default: Any) -> str:
    if default is None or "default" in help_text:
        return help_text
    if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    return f"{help_text} (default: {default})".replace("%", "%%")


class _Deprecated(argparse.Action):
    """An old option spelling: works, with a one-line note naming the new one."""

    def __init__(self, *args: Any, new: str, **kw: Any):
        self.new = new
        super().__init__(*args, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        deprecated(str(option_string), self.new)
        setattr(namespace, self.dest, values)


__all__ = ["EvalSpec", "REGISTRY", "SCHEMA", "Term", "add_options", "deprecated", "flag",
           "load_all", "make_result", "option", "register", "spec_class", "spec_of"]

"""The base model and the bounded value types of crild's configuration files.

Every model is strict (no silent coercion: ``"yes"`` is not a boolean, ``2.0`` is not an
integer), refuses unknown keys and non-finite numbers. A bounded type carries the phrase
that error messages use for it (``Expect``), so a message reads "expected a ratio in
[0, 1), got 1.5" rather than pydantic's wording.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, ClassVar, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pipeline.schema.messages import Expect, field_error, suggest
from pipeline.schema.paths import not_utf8


class Strict(BaseModel):
    """Base of every configuration section."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_default=False)
    # key -> (the key beside it that decides whether it is read, the values under which it is)
    read_only_with: ClassVar[dict[str, tuple[str, tuple]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _sections_over_their_defaults(cls, data):
        """A section given in part keeps its field's defaults for the rest: ``kd: {epochs: 2}``
        keeps the KD phase's batch size and learning rate, not the generic training section's
        (which differ), and ``supplementary[0].task: {data_dir: x}`` keeps task snli. A section
        written with nothing under it (every key commented out) is YAML's null: the defaults,
        as an empty mapping is. Where a whole section may be absent (``random_init: null``),
        null keeps meaning none: the union takes it first."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if field.default_factory is None or not (value is None or isinstance(value, dict)) or name not in data:
                continue
            default = field.default_factory()
            if isinstance(default, Strict):
                out[name] = {**default.model_dump(exclude_unset=True), **(value or {})}
        return out

    @model_validator(mode="after")
    def _no_unread_setting(self):
        """A key changed from its default that the key beside it leaves unread is refused, as an
        unknown key is: it was written to change something and would change nothing
        (``num_layers: 6`` beside ``init: random`` trains random_init's shape, silently). Its
        default passes: ``crild config`` prints every key, and what it prints reads back. A
        decider left null where null reads nothing takes its value from another section
        (``stages.baseline`` keeps the KD phase's): the key is judged where that is known."""
        for key, (decider, reading) in self.read_only_with.items():
            decided = getattr(self, decider)
            if decided is not None or None in reading:
                check_read(type(self), key, getattr(self, key), decider, decided)
        return self


def check_read(model: type[Strict], key: str, value, decider: str, decided, whose: str = "", at: str = "") -> None:
    """Refuse ``value`` of ``model``'s ``key`` (under the validated model's ``at``) when the
    deciding key's value ``decided`` (``whose``: where it comes from, when not beside it)
    leaves it unread; its default passes."""
    reading = model.read_only_with[key][1]
    if decided in reading or value == model.model_fields[key].get_default(call_default_factory=True):
        return
    shown = "" if isinstance(value, BaseModel) else f"{yaml_text(value)} is "
    raise field_error(f"{shown}used only with {decider}: {' or '.join(map(yaml_text, reading))}, and {decider} is "
                      f"{yaml_text(decided)}{whose}; set {decider}: {yaml_text(reading[0])} or remove {key}", at + key)


def yaml_text(value) -> str:
    """A scalar as YAML writes it (true, null, 0.5), for messages about a file's values."""
    if value is None:
        return "null"
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_float(value):
    """'2e-4': YAML 1.1 (PyYAML) reads exponents without a dot as strings; users write them."""
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_yaml11_float)]
PositiveInt = Annotated[int, Field(ge=1), Expect("a positive integer")]
NonNegativeInt = Annotated[int, Field(ge=0), Expect("an integer >= 0")]
PositiveFloat = Annotated[Float, Field(gt=0), Expect("a positive number")]
NonNegativeFloat = Annotated[Float, Field(ge=0), Expect("a number >= 0")]
Ratio = Annotated[Float, Field(ge=0, lt=1), Expect("a ratio in [0, 1)")]
Fraction = Annotated[Float, Field(ge=0, le=1), Expect("a ratio in [0, 1]")]
Probability = Annotated[Float, Field(ge=0, le=1), Expect("a probability in [0, 1]")]
# numpy's legacy seeding takes [0, 2**32); torch and default_rng take more, so this is the bound
Seed = Annotated[int, Field(ge=0, lt=2**32), Expect("a seed in [0, 4294967295]")]


class PathMark:
    """Marks a value that names a file or folder, so that ``paths_in`` finds every one."""


PATH = PathMark()

ENV_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")


def _environment_expanded(value: str) -> str:
    """``$NAME`` and ``${NAME}`` in a path replaced by the variable's value, as a shell does
    (``output_dir: $SCRATCH/crild/run1`` in a Slurm user's file). One that is unset or empty
    is refused: a shell would make ``$SCRATCH/run1`` ``/run1``, and taken as written it was
    a folder named ``$SCRATCH`` under the working directory."""
    def value_of(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if not os.environ.get(name):
            state = "empty" if name in os.environ else "not set"
            raise field_error(f"expected a file or folder path, got {value!r}, whose environment variable {name} is "
                              f"{state} here; set it, or write the path out")
        return os.environ[name]

    return ENV_VARIABLE.sub(value_of, value)


def _path(value: str) -> str:
    """A file or folder a user writes: '~/runs/x' is in their home folder and '$SCRATCH/x' in
    that variable's folder, as in a shell, not in folders named '~' or '$SCRATCH' under the
    working directory. An empty one is a slip, not a choice (it would mean the working
    directory: a data_dir of '' read whatever files lay there)."""
    if not value.strip():
        raise field_error(f"expected a file or folder path, got {value!r} (leave the key out, or null where it may "
                          f"be unset, for its default)")
    if "\x00" in value:
        raise field_error(f"expected a file or folder path, got {value!r}, which holds a NUL character")
    problem = not_utf8(value)
    if problem:
        raise field_error(f"expected a file or folder path in UTF-8, got {value!r}: {problem}")
    return os.path.expanduser(_environment_expanded(value))


PathText = Annotated[str, AfterValidator(_path), PATH]


def _marked(annotation) -> bool:
    if get_origin(annotation) is Annotated and any(m is PATH for m in annotation.__metadata__):
        return True
    return any(_marked(arg) for arg in get_args(annotation))


def paths_in(section: BaseModel, prefix: str) -> dict[str, str]:
    """dotted key -> value of every file or folder named in ``section`` (keys of type
    ``PathText``, in nested sections and lists too), for the values that are set."""
    found: dict[str, str] = {}
    for name, info in type(section).model_fields.items():
        value, key = getattr(section, name), f"{prefix}.{name}"
        if PATH in info.metadata or _marked(info.annotation):
            if isinstance(value, list):
                found.update({f"{key}[{i}]": v for i, v in enumerate(value)})
            elif value is not None:
                found[key] = value
        elif isinstance(value, BaseModel):
            found.update(paths_in(value, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found.update(paths_in(item, f"{key}[{i}]"))
    return found


def one_of(names, noun: str, always_list: bool = False):
    """A string that must be one of a registry's names (tasks, presets, terms, stages): the
    error names the nearest one, and lists them all when none is near (or always)."""
    names = tuple(names)

    def check(value: str) -> str:
        if value not in names:
            hint = suggest(value, names)
            known = f" (known: {', '.join(names)})" if always_list or not hint else ""
            raise field_error(f"unknown {noun} '{value}'{hint}{known}")
        return value

    return Annotated[str, AfterValidator(check), Expect(f"a {noun} name")]


def _text(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def listing(item, noun: str, *, non_empty: bool = False, order=None):
    """A list of ``item`` in which nothing is listed twice (a repeat is a slip: it would run,
    score or weigh the same thing twice); with ``non_empty`` at least one entry (an empty list
    would run nothing), and with ``order`` (the registry's names, in the order they run) in
    that order, because that is the order they run in whatever the list says."""
    rank = {name: i for i, name in enumerate(order)} if order is not None else None

    def check(values: list) -> list:
        if non_empty and not values:
            raise field_error(f"expected at least one {noun}, got an empty list")
        seen = []
        for i, value in enumerate(values):
            if value in seen:
                what = f"{_text(value)} is listed twice" if isinstance(value, (str, int, float, list)) else \
                    f"[{i}] is the same as [{seen.index(value)}]"
                raise field_error(f"{what}; expected each {noun} once")
            seen.append(value)
        if rank is not None:
            for before, after in zip(values, values[1:]):
                if rank[after] < rank[before]:
                    raise field_error(f"{_text(after)} is listed after {_text(before)}; {noun}s run in the order "
                                      f"{', '.join(order)}, so expected them in that order")
        return values

    return Annotated[list[item], AfterValidator(check)]

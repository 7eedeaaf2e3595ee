"""The shape limits on parsed YAML and JSON (pipeline/schema/nesting.py): the check counts
values with every alias expanded but measures each shared value once, so a small file that
stands for billions of values is refused at once; it agrees with a plain count on trees of
every shape (hypothesis)."""
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import UserError
from pipeline.schema import nesting
from pipeline.schema.nesting import MAX_DEPTH, check_shape


def plain_count(value) -> tuple[int, int]:
    """(values, depth) by walking every alias again: the definition the check must meet."""
    if isinstance(value, dict):
        kids = [plain_count(v) for v in [*value.keys(), *value.values()]]
    elif isinstance(value, list):
        kids = [plain_count(v) for v in value]
    else:
        return 1, 0
    return 1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)


def test_aliases_that_stand_for_billions_of_values_are_refused():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefghi", "bcdefghij")]
    bomb = yaml.safe_load("\n".join(lines))  # 9**10 strings once expanded; the parse shares them
    with pytest.raises(UserError, match=r"^bomb.yaml: its aliases \(\*name\) expand to more than 100,000 values"):
        check_shape(bomb, "bomb.yaml")


def test_aliases_of_a_modest_size_are_fine():
    shared = yaml.safe_load("base: &base {lr: 1, epochs: 2}\nteacher: *base\nstudent: *base\n")
    check_shape(shared, "ok.yaml")
    assert plain_count(shared)[0] == 19  # the mapping, 3 keys, and 3 copies of {lr, epochs} (5 each)


def test_a_list_that_holds_itself_is_refused():
    loop = yaml.safe_load("&a [1, *a]")
    with pytest.raises(UserError, match=r"^x: an alias \(\*name\) refers to a list or mapping that holds it"):
        check_shape(loop, "x")
    check_shape([[1], [1]], "x")  # the same value twice is no loop


@pytest.mark.parametrize("depth, refused", [(MAX_DEPTH, False), (MAX_DEPTH + 1, True)])
def test_the_depth_limit(depth, refused):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    assert plain_count(value)[1] == depth
    if refused:
        with pytest.raises(UserError, match=f"^f: nested more than {MAX_DEPTH} levels deep; expected at most {MAX_DEPTH}"):
            check_shape(value, "f")
    else:
        check_shape(value, "f")


trees = st.recursive(st.none() | st.integers() | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
                     max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(tree=trees, share=st.integers(min_value=0, max_value=3), limit=st.integers(min_value=1, max_value=60),
       depth=st.integers(min_value=1, max_value=6))
def test_the_check_agrees_with_a_plain_count(monkeypatch_module, tree, share, limit, depth):
    """With the tree repeated ``share`` times by reference (as YAML aliases make it), the
    check refuses exactly the values whose plain count passes a limit."""
    value = [tree] * share if share else tree
    monkeypatch_module.setattr(nesting, "MAX_VALUES", limit)
    monkeypatch_module.setattr(nesting, "MAX_DEPTH", depth)
    values, levels = plain_count(value)
    if values > limit or levels > depth:
        with pytest.raises(UserError):
            check_shape(value, "t")
    else:
        check_shape(value, "t")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch

"""TORCH_CUDA_ARCH_LIST with architecture-specific entries (9.0a), which DeepSpeed's op
builder cannot read: the first GPU check failed on it when FusedAdam compiled."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.runtime.cuda_arch import VARIABLE, Unreadable, deepspeed_arch_list, prepare_arch_list


@pytest.mark.parametrize("value, expected", [
    ("9.0a", "9.0"),
    ("8.0;9.0a", "8.0;9.0"),
    ("8.0 8.6 9.0a 10.0f+PTX", "8.0;8.6;9.0;10.0+PTX"),
    ("9.0;9.0a", "9.0"),  # the same architecture once
    ("12.0a+ptx", "12.0+PTX"),
    ("Hopper", "9.0+PTX"),  # PyTorch's names, as PyTorch numbers them
    ("Ampere;9.0a", "8.0;8.6+PTX;9.0"),
])
def test_suffixed_entries_become_what_deepspeed_reads(value, expected):
    assert deepspeed_arch_list(value) == expected


@pytest.mark.parametrize("value", ["9.0", "8.0;9.0+PTX", "7.5;8.0;8.6"])
def test_readable_lists_are_left_alone(value):
    assert deepspeed_arch_list(value) is None
    env = {VARIABLE: value}
    assert prepare_arch_list(env) is None and env == {VARIABLE: value}


def test_unset_or_empty_is_left_alone():
    for env in ({}, {VARIABLE: " "}):
        before = dict(env)
        assert prepare_arch_list(env) is None and env == before


@pytest.mark.parametrize("value, entry", [("9", "9"), ("9.0;sm_90", "sm_90"), ("9.0-PTX", "9.0-PTX")])
def test_entries_nobody_can_read_are_left_alone_with_a_note(value, entry):
    """Only a DeepSpeed op build reads the list (the shipped configurations build none): a
    run that builds nothing must not be stopped by it."""
    with pytest.raises(Unreadable, match=entry):
        deepspeed_arch_list(value)
    env = {VARIABLE: value}
    assert prepare_arch_list(env) == (f"{VARIABLE}={value}: '{entry}' is not an architecture DeepSpeed's op builder "
                                      f"can read (MAJOR.MINOR, e.g. 9.0); a DeepSpeed op that compiles on first use "
                                      f"(its FusedAdam) would fail")
    assert env == {VARIABLE: value}


def test_the_rewritten_list_is_what_deepspeeds_own_builder_reads(monkeypatch):
    """DeepSpeed's FusedAdam builder fails on the original list and reads the rewritten one."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    builder = FusedAdamBuilder()
    builder.jit_mode = True  # how it builds on first use
    monkeypatch.setenv(VARIABLE, "8.0;9.0a")
    with pytest.raises(ValueError, match="0a"):
        builder.compute_capability_args()
    monkeypatch.setenv(VARIABLE, "8.0;9.0a")
    import os

    note = prepare_arch_list(os.environ)
    assert "9.0a" in note and "8.0;9.0" in note
    assert os.environ[VARIABLE] == "8.0;9.0"
    builder.compute_capability_args()  # reads it
    assert "9.0" in os.environ[VARIABLE]


@given(st.lists(st.tuples(st.integers(5, 12), st.integers(0, 9), st.sampled_from(["", "a", "f"]),
                          st.booleans()), min_size=1, max_size=6),
       st.sampled_from([";", " "]))
def test_any_list_of_versions_becomes_readable_and_keeps_its_architectures(entries, sep):
    value = sep.join(f"{major}.{minor}{suffix}{'+PTX' if ptx else ''}" for major, minor, suffix, ptx in entries)
    out = deepspeed_arch_list(value)
    readable = (out or value).replace(" ", ";").split(";")
    for entry in readable:  # DeepSpeed's parse: int major, int minor before any +PTX
        major, minor = entry.split(".")
        int(major), int(minor.split("+")[0])
    assert {e.split("+")[0] for e in readable} == {f"{major}.{minor}" for major, minor, _, _ in entries}

"""BERT-EMD's many-to-many layer map: the transport plan, the weight update against a
literal port of the reference code, and the term's state across steps and checkpoints."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_distill import FakeEngine, batch, objective

from pipeline.distill import emd
from pipeline.distill.objective import TERM_STATE


def reference_update(flow, distance, w_s, w_t):
    """get_new_layer_weight of the reference code (jongwooko/CR-ILD losses.py, from BERT-EMD),
    on its (n_s + n_t) square layout, loop for loop."""
    n_s, n_t = len(w_s), len(w_t)
    trans = np.zeros((n_s + n_t, n_s + n_t))
    dist = np.zeros((n_s + n_t, n_s + n_t))
    trans[:n_s, n_s:] = flow
    dist[:n_s, n_s:] = distance
    dist[n_s:, :n_s] = distance.T
    student, teacher = np.copy(w_s), np.copy(w_t)
    tw = np.sum(trans * dist, -1)
    for i in range(n_s):
        student[i] = tw[i] / student[i]
    s = np.sum(student)
    for i in range(n_s):
        if student[i] != 0:
            student[i] = s / student[i]
    tw = np.sum(np.transpose(trans) * dist, -1)
    for j in range(n_t):
        teacher[j] = tw[j + n_s] / teacher[j]
    s = np.sum(teacher)
    for j in range(n_t):
        if teacher[j] != 0:
            teacher[j] = s / teacher[j]
    return student / student.sum(), teacher / teacher.sum()


def test_transport_golden():
    # two student layers of weight 1/2 each, three teacher layers of 1/3: the cheap diagonal
    # band is used as far as the marginals allow
    cost = np.array([[0.0, 1.0, 4.0], [4.0, 1.0, 0.0]])
    flow = emd.transport(np.array([0.5, 0.5]), emd.uniform(3), cost)
    np.testing.assert_allclose(flow, [[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]], atol=1e-9)
    # one student layer: everything flows to it, whatever the cost
    np.testing.assert_allclose(emd.transport(np.array([1.0]), emd.uniform(4), np.arange(4.0)[None]),
                               [[0.25] * 4], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_transport_is_a_plan_and_no_cheaper_one_exists(n_s, n_t, seed):
    rng = np.random.default_rng(seed)
    w_s, w_t = rng.dirichlet(np.ones(n_s)), rng.dirichlet(np.ones(n_t))
    cost = rng.uniform(0, 2, size=(n_s, n_t))
    flow = emd.transport(w_s, w_t, cost)
    assert (flow >= 0).all()
    np.testing.assert_allclose(flow.sum(1), w_s, atol=1e-8)
    np.testing.assert_allclose(flow.sum(0), w_t, atol=1e-8)
    # the north-west corner rule gives a feasible plan: the optimum is never dearer
    nw, a, b = np.zeros((n_s, n_t)), w_s.copy(), w_t.copy()
    i = j = 0
    while i < n_s and j < n_t:
        m = min(a[i], b[j])
        nw[i, j], a[i], b[j] = m, a[i] - m, b[j] - m
        i, j = (i + 1, j) if a[i] <= b[j] else (i, j + 1)
    assert (flow * cost).sum() <= (nw * cost).sum() + 1e-9


def test_weight_update_equals_the_reference_code():
    rng = np.random.default_rng(7)
    w_s, w_t = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(6))
    cost = rng.uniform(0.1, 3, size=(3, 6))
    flow = emd.transport(w_s, w_t, cost)
    new_s, new_t = emd.updated_weights(flow, cost, w_s, w_t)
    ref_s, ref_t = reference_update(flow, cost, w_s, w_t)
    np.testing.assert_allclose(new_s, ref_s, rtol=1e-12)
    np.testing.assert_allclose(new_t, ref_t, rtol=1e-12)
    # by hand: the layer that transports cheapest per unit of weight gets the most weight
    cost = np.array([[1.0, 1.0], [3.0, 3.0]])
    new_s, _ = emd.updated_weights(emd.transport(emd.uniform(2), emd.uniform(2), cost), cost,
                                   emd.uniform(2), emd.uniform(2))
    np.testing.assert_allclose(new_s, [0.75, 0.25])


def test_zero_cost_layer_takes_the_weight_and_nothing_divides_by_zero():
    cost = np.array([[0.0, 2.0], [2.0, 1.0]])
    flow = emd.transport(emd.uniform(2), emd.uniform(2), cost)
    new_s, new_t = emd.updated_weights(flow, cost, emd.uniform(2), emd.uniform(2))
    assert np.isfinite(new_s).all() and np.isfinite(new_t).all()
    assert new_s[0] > 0.999 and new_t[0] > 0.999


def test_emd_loss_gradient_state_and_non_finite_cost():
    cost = torch.tensor([[0.0, 1.0, 4.0], [4.0, 1.0, 0.0]], requires_grad=True)
    state: dict = {}
    loss = emd.emd_loss(cost, state)
    assert loss.item() == pytest.approx(1 / 6 + 1 / 6)
    loss.backward()
    torch.testing.assert_close(cost.grad, torch.tensor([[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]]))
    assert set(state) == {"student", "teacher"} and sum(state["teacher"]) == pytest.approx(1.0)
    before = dict(state)
    bad = torch.tensor([[float("nan"), 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert not torch.isfinite(emd.emd_loss(bad, state))
    assert state == before  # a skipped step does not move the weights


def test_emd_ild_objective_moves_weights_and_a_checkpoint_keeps_them(tiny_bert, tmp_path):
    obj, module, _ = objective(tiny_bert, "emd-ild")
    assert obj.layout.pairs[0] == (0, 0) and len(obj.layout.pairs) == 1 + 2 * 4  # embeddings + all 2 x 4
    total, comps = obj(FakeEngine(), batch(), micro_step=0)
    assert {"emd_attention", "emd_hidden", "emd_hidden/hidden", "emd_hidden/embeddings"} <= set(comps)
    # layer_reduction sum: the total is the plain sum of the terms
    expected = comps["emd_attention"] + comps["emd_hidden"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    state = obj.term_state
    assert set(state) == {"emd_attention", "emd_hidden"}
    assert len(state["emd_attention"]["student"]) == 2 and len(state["emd_attention"]["teacher"]) == 4
    assert state["emd_attention"]["teacher"] != [0.25] * 4  # moved away from uniform
    # the weights the step moved to are logged, one scalar per layer and side
    _, logged = obj(FakeEngine(), batch(), micro_step=1)
    for name in state:
        for side, layers in (("student", (1, 2)), ("teacher", (1, 2, 3, 4))):
            got = [logged[f"{name}/weight/{side}{layer}"].item() for layer in layers]
            assert got == pytest.approx(state[name][side], abs=1e-7) and sum(got) == pytest.approx(1.0)
    assert "emd_attention/weight/teacher1" in comps  # the first step logs the weights it leaves too
    obj.save_extra(tmp_path)
    fresh, _, _ = objective(tiny_bert, "emd-ild")
    fresh.load_extra(tmp_path)
    assert fresh.term_state == state  # bitwise: JSON keeps every float exactly
    assert (tmp_path / TERM_STATE).is_file()


def _rank_with_its_own_cost(rank: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    from pipeline.runtime.distributed import mean_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cost = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.5, 1.0]]) * (1 + rank)  # each rank sees other data
    state: dict = {}
    emd.emd_loss(cost, state, mean_across_ranks)
    out[rank] = state
    dist.destroy_process_group()


def test_ranks_solve_the_same_flow_from_their_mean_cost():
    import torch.multiprocessing as mp

    from pipeline.runtime.distributed import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_with_its_own_cost, args=(free_port(), out), nprocs=2, join=True)
        states = dict(out)
    mean = np.array([[1.0, 2.0, 3.0], [2.0, 0.5, 1.0]]) * 1.5
    expected_s, expected_t = emd.updated_weights(emd.transport(emd.uniform(2), emd.uniform(3), mean), mean,
                                                 emd.uniform(2), emd.uniform(3))
    assert states[0] == states[1]
    np.testing.assert_allclose(states[0]["student"], expected_s, rtol=1e-12)
    np.testing.assert_allclose(states[0]["teacher"], expected_t, rtol=1e-12)

"""Golden values for every loss function, computed independently in float64 with loops."""
import math

import numpy as np
import pytest
import torch

from pipeline.distill import losses

rng = np.random.default_rng(1234)


def t32(a):
    return torch.tensor(a, dtype=torch.float32)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_logit_kd_golden():
    s, t, T = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 2.0
    expected = np.mean([-(softmax(t[i] / T) * np.log(softmax(s[i] / T))).sum() for i in range(3)]) * T * T
    assert losses.logit_kd(t32(s), t32(t), T, regression=False).item() == pytest.approx(expected, rel=1e-5)
    assert losses.logit_kd(t32(s[:, :1]), t32(t[:, :1]), T, regression=True).item() == pytest.approx(
        np.mean((s[:, 0] - t[:, 0]) ** 2), rel=1e-5)


def test_task_loss_golden():
    z, y = rng.normal(size=(4, 3)), np.array([0, 2, 1, 2])
    expected = np.mean([-np.log(softmax(z[i])[y[i]]) for i in range(4)])
    assert losses.task_loss(t32(z), torch.tensor(y), False).item() == pytest.approx(expected, rel=1e-5)


def relation_rows(x, heads, mask):
    """x: (T, H) one example; returns per-head list of row distributions over real columns."""
    T, H = x.shape
    d = H // heads
    out = []
    for h in range(heads):
        xh = x[:, h * d:(h + 1) * d]
        rows = {}
        for i in range(T):
            if not mask[i]:
                continue
            logits = np.array([xh[i] @ xh[j] / math.sqrt(d) for j in range(T) if mask[j]])
            rows[i] = softmax(logits)
        out.append(rows)
    return out


def kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum())


def relation_kl_by_hand(tx, sx, heads, mask):
    total, count = 0.0, 0
    for b in range(tx.shape[0]):
        rt, rs = relation_rows(tx[b], heads, mask[b]), relation_rows(sx[b], heads, mask[b])
        for h in range(heads):
            for i in rt[h]:
                total += kl(rt[h][i], rs[h][i])
                count += 1
    return total / count


def test_relation_kl_golden_with_padding_and_different_widths():
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    tx, sx = rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 5, 8))  # widths differ, 4 relation heads
    got = losses.relation_kl(t32(tx), t32(sx), 4, torch.tensor(mask)).item()
    assert got == pytest.approx(relation_kl_by_hand(tx, sx, 4, mask), rel=1e-4)


def test_relation_kl_zero_for_equal_inputs_and_unchanged_by_padding():
    x = t32(rng.normal(size=(1, 4, 8)))
    m = torch.ones(1, 4, dtype=torch.long)
    assert losses.relation_kl(x, x, 2, m).item() == pytest.approx(0.0, abs=1e-6)
    tx, sx = t32(rng.normal(size=(1, 4, 8))), t32(rng.normal(size=(1, 4, 8)))
    base = losses.relation_kl(tx, sx, 2, m).item()
    def pad(x):  # garbage in the padding
        return torch.cat([x, t32(rng.normal(size=(1, 3, 8)) * 50)], dim=1)

    padded = losses.relation_kl(pad(tx), pad(sx), 2, torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).item()
    assert padded == pytest.approx(base, rel=1e-5)


def test_attention_kl_and_score_mse_golden():
    mask = np.array([[1, 1, 1, 0]])
    tq, tk, sq, sk = (rng.normal(size=(1, 4, 8)) for _ in range(4))
    heads, d = 2, 4
    kl_total, mse_total, mse_count, rows = 0.0, 0.0, 0, 0
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        ts = tq[0][:, sl] @ tk[0][:, sl].T / math.sqrt(d)
        ss = sq[0][:, sl] @ sk[0][:, sl].T / math.sqrt(d)
        for i in range(3):
            kl_total += kl(softmax(ts[i, :3]), softmax(ss[i, :3]))
            rows += 1
            for j in range(3):
                mse_total += (ts[i, j] - ss[i, j]) ** 2
                mse_count += 1
    m = torch.tensor(mask)
    assert losses.attention_kl(t32(tq), t32(tk), t32(sq), t32(sk), 2, 2, m).item() == pytest.approx(
        kl_total / rows, rel=1e-4)
    assert losses.attention_score_mse(t32(tq), t32(tk), t32(sq), t32(sk), 2, 2, m).item() == pytest.approx(
        mse_total / mse_count, rel=1e-5)


def test_hidden_mse_and_pkd_golden():
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    th, sh = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    vals = [((th[b, i] - sh[b, i]) ** 2).mean() for b in range(2) for i in range(3) if mask[b, i]]
    assert losses.hidden_mse(t32(th), t32(sh), torch.tensor(mask)).item() == pytest.approx(np.mean(vals), rel=1e-5)
    per_example = [((th[b, 0] / np.linalg.norm(th[b, 0]) - sh[b, 0] / np.linalg.norm(sh[b, 0])) ** 2)
                   for b in range(2)]
    # the PKD authors' code: F.mse_loss, a mean over the features too; the paper's formula: their sum
    assert losses.normalized_cls_mse(t32(th), t32(sh)).item() == pytest.approx(
        np.mean([d.mean() for d in per_example]), rel=1e-5)
    assert losses.normalized_cls_mse(t32(th), t32(sh), "sum").item() == pytest.approx(
        np.mean([d.sum() for d in per_example]), rel=1e-5)


def test_masked_kl_with_different_key_masks_golden():
    """The consistency term compares a mixed view (union mask) with a clean one (own mask)."""
    t_logits, p_logits = rng.normal(size=(1, 1, 3, 3)), rng.normal(size=(1, 1, 3, 3))
    target_keys, pred_keys, rows = np.array([[1, 1, 0]]), np.array([[1, 1, 1]]), np.array([[1, 1, 0]])
    expected = np.mean([kl(np.append(softmax(t_logits[0, 0, i, :2]), 0.0) + 1e-300, softmax(p_logits[0, 0, i]))
                        for i in range(2)])
    got = losses.masked_kl(t32(t_logits), t32(p_logits), torch.tensor(target_keys), torch.tensor(pred_keys),
                           torch.tensor(rows)).item()
    assert got == pytest.approx(expected, rel=1e-4)

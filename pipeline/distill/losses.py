"""Loss functions on plain tensors, computed in float32 whatever the engine's precision.
Padding is masked everywhere: ``mask`` arguments are (batch, seq) with 1 for real tokens.

Conventions (each has a golden-value test in tests/test_losses.py):
- relation/attention KL terms: KL(target || prediction) per row, averaged over heads and
  real rows; padded columns get zero probability.
- MSE terms: mean over real positions and features.
- PKD: the squared distance of normalised [CLS] vectors, mean over the features by default
  (the PKD authors' code and the reference code behind the paper's PKD numbers: F.mse_loss);
  ``features="sum"`` is the PKD paper's formula, D times larger.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG_INF = -1e30  # large negative finite value: no inf - inf NaNs in float32


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Hard-label cross-entropy, or MSE on the single output for regression tasks."""
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool) -> torch.Tensor:
    """Hinton KD: T^2 * CE(softmax(z_t / T), log_softmax(z_s / T)), mean over the batch;
    MSE between the logits for regression tasks."""
    student, teacher = student.float(), teacher.float()
    if regression:
        return F.mse_loss(student, teacher)
    soft = F.softmax(teacher / temperature, dim=-1)
    return -(soft * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean() * temperature**2


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, heads, seq, hidden / heads)."""
    b, t, h = x.shape
    if h % heads:
        raise ValueError(f"hidden size {h} is not divisible by {heads} heads")
    return x.view(b, t, heads, h // heads).transpose(1, 2)


def scaled_dot(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head a b^T / sqrt(d_head): attention scores (a=Q, b=K) or self-relations (a=b)."""
    a, b = split_heads(a.float(), heads), split_heads(b.float(), heads)
    return a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])


def masked_kl(target_logits: torch.Tensor, pred_logits: torch.Tensor, target_keys: torch.Tensor,
              pred_keys: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over heads and real rows of KL(softmax(target) || softmax(pred)) per row.

    target_logits, pred_logits: (batch, heads, seq, seq) row logits; target_keys/pred_keys:
    (batch, seq) masks of the columns each side may attend to; rows: (batch, seq) mask of
    the rows that count."""
    t_log = F.log_softmax(target_logits.masked_fill(target_keys[:, None, None, :] == 0, NEG_INF), dim=-1)
    p_log = F.log_softmax(pred_logits.masked_fill(pred_keys[:, None, None, :] == 0, NEG_INF), dim=-1)
    t_prob = t_log.exp()
    terms = torch.where(target_keys[:, None, None, :] > 0, t_prob * (t_log - p_log), torch.zeros_like(t_log))
    per_row = terms.sum(-1)  # (batch, heads, seq)
    row_mask = rows[:, None, :].to(per_row.dtype)
    return (per_row * row_mask).sum() / (row_mask.sum() * per_row.shape[1]).clamp_min(1.0)


def relation_kl(teacher_x: torch.Tensor, student_x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2 self-relation loss for one of Q, K, V: both sides re-split into ``heads``
    relation heads (their widths may differ), KL(R_teacher || R_student)."""
    return masked_kl(scaled_dot(teacher_x, teacher_x, heads), scaled_dot(student_x, student_x, heads),
                     mask, mask, mask)


def attention_kl(t_q, t_k, s_q, s_k, t_heads: int, s_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM attention-distribution transfer: KL(A_teacher || A_student) per head."""
    return masked_kl(scaled_dot(t_q, t_k, t_heads), scaled_dot(s_q, s_k, s_heads), mask, mask, mask)


def attention_score_mse(t_q, t_k, s_q, s_k, t_heads: int, s_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT attention loss: MSE between (unnormalised) attention scores over real
    (row, column) pairs and heads."""
    return score_mse(scaled_dot(t_q, t_k, t_heads), scaled_dot(s_q, s_k, s_heads), mask)


def score_mse(t: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between two (batch, heads, seq, seq) score tensors over real (row, column) pairs."""
    pair = (mask[:, :, None] * mask[:, None, :]).to(t.dtype)[:, None]  # (batch, 1, seq, seq)
    return (((t - s) ** 2) * pair).sum() / (pair.sum() * t.shape[1]).clamp_min(1.0)


def hidden_mse(teacher_h: torch.Tensor, student_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens and features (student_h already projected to the teacher's width)."""
    m = mask[..., None].to(torch.float32)
    diff = (teacher_h.float() - student_h.float()) ** 2 * m
    return diff.sum() / (m.sum() * teacher_h.shape[-1]).clamp_min(1.0)


def normalized_cls_mse(teacher_h: torch.Tensor, student_h: torch.Tensor, features: str = "mean") -> torch.Tensor:
    """PKD: squared distance between L2-normalised [CLS] vectors, mean over the batch and,
    by ``features``, the mean (the authors' code) or the sum (the paper's formula) over the
    features."""
    t = F.normalize(teacher_h[:, 0].float(), dim=-1)
    s = F.normalize(student_h[:, 0].float(), dim=-1)
    squared = (t - s) ** 2
    return (squared.mean(-1) if features == "mean" else squared.sum(-1)).mean()

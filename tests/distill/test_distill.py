"""The distillation step: mixup view, consistency on/off, gradient flow, presets, the KD
teacher-logit cache, and the full three-phase stage."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_run_config

from pipeline import stage1_teacher, stage3_distill
from pipeline.config import RandomInit, from_dict
from pipeline.data.tasks import TASKS
from pipeline.distill.layers import LayerLayout, layer_pairs
from pipeline.distill.mixup import draw_lambda, partner_index
from pipeline.distill.objective import DistillObjective
from pipeline.distill.presets import PRESETS, resolve_phases, revisions
from pipeline.distill.student import DistillModule, size_note
from pipeline.distill.terms import TERMS
from pipeline.errors import UserError
from pipeline.models.loading import build_classifier
from pipeline.outputs.integrity import problems
from pipeline.outputs.manifest import MANIFEST
from pipeline.stages import FORCED_ENV
from pipeline.training.stop import StopRequest

SPEC = TASKS["rotten_tomatoes"]


class FakeEngine:
    global_steps = 0


def batch():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3], [2, 15, 16, 3, 0, 0, 0], [2, 17, 18, 19, 3, 0, 0]])
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": (ids != 0).long(),
            "labels": torch.tensor([1, 0, 1]), "index": torch.tensor([0, 1, 2])}


def objective(tiny_bert, preset, teacher_layers=4, student_layers=2, **kw):
    cfg = from_dict({"seed": 3, "stages": {"distill": {"preset": preset, **kw}}})
    distill_cfg = cfg.stages.distill
    plan = next(p for p in resolve_phases(distill_cfg) if p.name == ("ild" if "ild" in PRESETS[preset].phases else "kd"))
    teacher = build_classifier(str(tiny_bert), SPEC, "teacher").eval().requires_grad_(False)
    student = build_classifier(str(tiny_bert), SPEC, "student", num_layers=student_layers)
    embeddings = any(TERMS[t].embeddings for t in plan.terms)
    pairs = layer_pairs(distill_cfg, student_layers, teacher_layers, embeddings)
    module = DistillModule(student, sorted({s for s, _ in pairs}), teacher.config.hidden_size)
    obj = DistillObjective(cfg, plan, module, teacher, LayerLayout(pairs, 4), torch.device("cpu"),
                           total_micro_steps=10)
    return obj, module, teacher


def test_lambda_is_folded_and_reproducible():
    lams = [draw_lambda(0, s, 1.0) for s in range(500)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert abs(np.mean(lams) - 0.75) < 0.02  # max(U, 1-U) for Beta(1,1) has mean 0.75
    assert lams == [draw_lambda(0, s, 1.0) for s in range(500)]
    assert partner_index(4, "cpu").tolist() == [3, 2, 1, 0]


def test_mixed_view_uses_union_mask_and_mixed_embeddings(tiny_bert):
    obj, module, teacher = objective(tiny_bert, "cr-ild")
    seen = {}
    layer0 = teacher.bert.encoder.layer[0]
    def grab(module, args, kwargs):
        seen.setdefault("emb", args[0] if args else kwargs["hidden_states"])

    h = layer0.register_forward_pre_hook(grab, with_kwargs=True)
    masks = []
    orig = teacher.forward
    teacher.forward = lambda **kw: (masks.append(kw["attention_mask"].clone()), orig(**kw))[1]
    b = batch()
    obj(FakeEngine(), b, micro_step=5)
    h.remove()
    m = b["attention_mask"]
    union = (m | m.flip(0)).bool()  # with the reversed partner; built as transformers' 4D SDPA mask
    assert masks[0].shape == (3, 1, 7, 7) and torch.equal(masks[0][:, 0], union[:, None, :].expand(3, 7, 7))
    lam = draw_lambda(3, 5, 1.0)
    with torch.no_grad():
        clean = teacher.bert.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
    torch.testing.assert_close(seen["emb"], lam * clean + (1 - lam) * clean.flip(0))


def test_consistency_in_total_for_cr_ild_and_absent_without(tiny_bert):
    obj, _, _ = objective(tiny_bert, "cr-ild")
    total, comps = obj(FakeEngine(), batch(), micro_step=5)
    assert comps["consistency"] > 0 and comps["consistency_weight"] == pytest.approx(0.1 * 5 / 10)
    expected = comps["qkv_relation_weighted"] + comps["consistency_weighted"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"qkv_relation/q", "qkv_relation/k", "qkv_relation/v", "lambda"} <= set(comps)

    obj, _, _ = objective(tiny_bert, "cr-ild-no-consistency")
    total, comps = obj(FakeEngine(), batch(), micro_step=5)
    assert "consistency" not in comps and "lambda" in comps
    assert total.item() == pytest.approx(comps["qkv_relation_weighted"].item(), rel=1e-6)

    obj, _, _ = objective(tiny_bert, "l-ild")
    _, comps = obj(FakeEngine(), batch(), micro_step=5)
    assert "lambda" not in comps and "consistency" not in comps


def test_relation_loss_zero_when_student_equals_teacher(tiny_bert):
    obj, module, teacher = objective(tiny_bert, "l-ild", student_layers=4)
    module.student.load_state_dict(teacher.state_dict())
    module.student.eval()
    total, _ = obj(FakeEngine(), batch(), micro_step=0)
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_only_student_and_projections(tiny_bert):
    from helpers import write_tiny_bert
    wide = write_tiny_bert(Path(str(tiny_bert) + "-wide"), hidden=48, heads=4)
    cfg = from_dict({"seed": 0, "stages": {"distill": {"preset": "tinybert"}}})
    distill_cfg = cfg.stages.distill
    plan = resolve_phases(distill_cfg)[0]
    teacher = build_classifier(str(wide), SPEC, "teacher").eval().requires_grad_(False)
    student = build_classifier(str(tiny_bert), SPEC, "student", num_layers=2)
    pairs = layer_pairs(distill_cfg, 2, 4, True)
    assert pairs == [(0, 0), (1, 2), (2, 4)]
    module = DistillModule(student, [0, 1, 2], 48)
    obj = DistillObjective(cfg, plan, module, teacher, LayerLayout(pairs, 4), torch.device("cpu"), 10)
    total, comps = obj(FakeEngine(), batch(), 0)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(module.projections[k].weight.grad is not None for k in ("0", "1", "2"))
    assert module.student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert {"attention_kl", "hidden_mse"} <= set(comps)


def test_layer_reduction_sum_is_the_mean_times_the_pairs(tiny_bert):
    """TinyBERT's code sums its layer terms (3 hidden pairs with the embeddings, 2 attention
    pairs); the mean divides each term by its own pair count."""
    summed, _, _ = objective(tiny_bert, "tinybert")
    averaged, module, _ = objective(tiny_bert, "tinybert", layer_reduction="mean")
    averaged.module.load_state_dict(summed.module.state_dict())
    assert summed.phase.layer_reduction == "sum" and averaged.phase.layer_reduction == "mean"
    _, s = summed(FakeEngine(), batch(), 0)
    _, m = averaged(FakeEngine(), batch(), 0)
    assert s["attention_kl"].item() == pytest.approx(2 * m["attention_kl"].item(), rel=1e-5)
    assert s["hidden_mse"].item() == pytest.approx(3 * m["hidden_mse"].item(), rel=1e-5)


def test_pkd_features_mean_is_the_sum_over_the_width(tiny_bert):
    mean, _, _ = objective(tiny_bert, "pkd")
    summed, _, _ = objective(tiny_bert, "pkd", pkd_features="sum")
    summed.module.load_state_dict(mean.module.state_dict())
    _, a = mean(FakeEngine(), batch(), 0)
    _, b = summed(FakeEngine(), batch(), 0)
    assert b["pkd"].item() == pytest.approx(32 * a["pkd"].item(), rel=1e-5)  # the teacher is 32 wide


def test_only_changed_presets_and_terms_change_fingerprints(monkeypatch):
    import dataclasses

    from pipeline.distill import presets
    from pipeline.stages import stage_fingerprint
    def revs(**distill):
        return revisions(from_dict({"stages": {"distill": distill}}).stages.distill)
    assert revs(preset="cr-ild") == {} and revs(preset="minilmv2") == {} and revs(preset="emd-ild") == {}
    assert revs(preset="tinybert") == {"preset": 1}
    assert revs(preset="pkd") == {"terms": {"pkd": 1}}
    assert revs(preset="l-ild", ild_terms={"pkd": 1.0}) == {"terms": {"pkd": 1}}  # the term, in any preset
    assert revs(preset="pkd", kd_terms={"pkd": 0}) == {}
    def fingerprint(preset):
        return stage_fingerprint(from_dict({"output_dir": "/nonexistent/x", "stages": {"distill": {
            "preset": preset, "teacher_model": "/nonexistent/t"}}}), "distill")
    before = {p: fingerprint(p) for p in ("tinybert", "pkd", "cr-ild")}
    monkeypatch.setitem(presets.PRESETS, "tinybert", dataclasses.replace(PRESETS["tinybert"], revision=2))
    monkeypatch.setitem(presets.TERMS, "pkd", dataclasses.replace(TERMS["pkd"], revision=2))
    after = {p: fingerprint(p) for p in before}
    assert after["tinybert"] != before["tinybert"] and after["pkd"] != before["pkd"]
    assert after["cr-ild"] == before["cr-ild"]


def test_every_registered_term_has_its_function_and_every_function_a_term():
    """The registry names each term's function in term_math by the term's name: a renamed
    function, or one added without its entry, would fail only when a preset first used it."""
    import inspect

    from pipeline.distill import term_math

    functions = {name for name, fn in vars(term_math).items()
                 if inspect.isfunction(fn) and fn.__module__ == term_math.__name__ and not name.startswith("_")
                 and list(inspect.signature(fn).parameters) == ["x"]}
    assert functions == set(TERMS)
    assert all(callable(term.fn) for term in TERMS.values())


def test_presets_resolve_to_the_papers_phases():
    def plans(preset, **kw):
        return [(p.name, p.terms, p.mixup, p.consistency) for p in
                resolve_phases(from_dict({"stages": {"distill": {"preset": preset, **kw}}}).stages.distill)]
    assert plans("kd") == [("kd", {"logit_kd": 1.0}, False, 0.0)]
    assert plans("pkd")[0][1] == {"logit_kd": 0.5, "ce": 0.5, "pkd": 100.0}
    assert plans("cr-ild")[0] == ("ild", {"qkv_relation": 1.0}, True, 0.1)
    assert plans("cr-ild")[1] == ("kd", {"logit_kd": 1.0}, False, 0.0)
    sup = {"supplementary": [{"task": {"name": "snli"}, "ratio": 2.0}]}
    assert [p[0] for p in plans("cr-ild", **sup)] == ["ild_supplementary", "ild", "kd"]
    assert [p[0] for p in plans("cr-ild", supplementary_mode="mixed", **sup)] == ["ild", "kd"]
    assert plans("tinybert")[0][1] == {"attention_kl": 1.0, "hidden_mse": 1.0}
    assert plans("emd-ild")[0][1] == {"emd_attention": 1.0, "emd_hidden": 1.0}
    reweighted = plans("tinybert", ild_terms={"attention_kl": 0, "pkd": 2.0})
    assert reweighted[0][1] == {"hidden_mse": 1.0, "pkd": 2.0} and reweighted[0][3] == 0.0
    with pytest.raises(UserError, match="no phase of preset 'tinybert' mixes them"):  # it would be ignored
        plans("tinybert", consistency={"weight": 0.3})
    assert plans("tinybert", consistency={"weight": 0.3}, mixup={"enabled": True})[0][2:] == (True, 0.3)


def test_layer_maps_of_the_presets():
    def pairs(preset, n_s, n_t):
        distill_cfg = from_dict({"stages": {"distill": {"preset": preset}}}).stages.distill
        return layer_pairs(distill_cfg, n_s, n_t, False)
    assert pairs("l-ild", 3, 6) == [(3, 6)] and pairs("cr-ild", 4, 12) == [(4, 12)]
    # MiniLMv2: the upper-middle teacher layer, 21 of 24 as in its paper; not the same as L-ILD
    assert pairs("minilmv2", 6, 24) == [(6, 21)] and pairs("minilmv2", 3, 6) == [(3, 5)]
    assert pairs("tinybert", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert pairs("emd-ild", 2, 3) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert pairs("emd-ild", 4, 2)[-1] == (4, 2)  # many-to-many: a deeper student is fine


@pytest.mark.parametrize("raw,fragment", [
    ({"preset": "cr-idl"}, "did you mean 'cr-ild'"),
    ({"ild_terms": {"qkv_relations": 1.0}}, "did you mean 'qkv_relation'"),
    ({"phases": ["ild", "kdd"]}, "did you mean 'kd'"),
    ({"consistency": {"target": "teacher"}}, "consistency.target"),
    ({"preset": "kd", "kd_terms": {"logit_kd": 0}}, "has no loss terms"),
])
def test_distill_config_errors(raw, fragment):
    with pytest.raises(UserError, match=fragment):
        from_dict({"stages": {"distill": raw}})


def test_relation_heads_that_do_not_divide(tmp_path, tiny_bert, tiny_teacher, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["stages"]["distill"] = {"preset": "l-ild", "teacher_model": str(tiny_teacher), "relation_heads": 5,
                                "ild": {"epochs": 1, "batch_size": 8}}
    with pytest.raises(UserError, match="5 relation heads do not divide the teacher's hidden size 32"):
        stage3_distill.run(from_dict(raw), stop=StopRequest(install_handlers=False))


def test_distill_before_teacher_exists_is_an_error(tmp_path, tiny_bert, sentiment_dir):
    with pytest.raises(UserError, match="no complete teacher; run the teacher stage first"):
        stage3_distill.run(from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)),
                           stop=StopRequest(install_handlers=False))


def test_three_phases_and_one_teacher_forward_per_example_in_kd(tmp_path, tiny_bert, sentiment_dir, monkeypatch):
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "home"))  # its own caches: it counts the stored logits
    small = {"batch_size": 8, "learning_rate": 1e-3, "log_every": 2, "checkpoint_every": 50}
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    other = shutil.copytree(sentiment_dir, tmp_path / "other")  # another dataset (the target's own rows never count)
    raw["stages"]["distill"] = {
        "preset": "cr-ild", "supplementary": [{"task": {"name": "rotten_tomatoes", "data_dir": str(other)},
                                               "ratio": 0.5}],
        "ild_supplementary": {"epochs": 1, **small}, "ild": {"epochs": 1, **small},
        "kd": {"epochs": 3, "eval_every": 4, **small}}
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    out = Path(cfg.output_dir)
    results = json.loads((out / "student" / "train_results.json").read_text())["phases"]
    assert list(results) == ["ild_supplementary", "ild", "kd"]
    assert results["ild_supplementary"]["examples"] == 48  # ratio 0.5 of 96
    # KD: 3 epochs over 96 examples, and the teacher ran on none of them during training...
    assert results["kd"]["teacher_forwards"] == 0
    # ...because its logits were computed once, before training, and stored beside the data
    from pipeline.data.sources import crild_home
    stored = list((crild_home() / "tokenized").glob("*/teacher_logits-*.safetensors"))
    assert len(stored) == 1
    from safetensors.torch import load_file
    assert load_file(str(stored[0]))["logits"].shape == (96, 2)
    final, last_phase = out / "student" / "model.safetensors", out / "student.phases" / "kd" / "model.safetensors"
    assert final.is_file() and final.stat().st_ino == last_phase.stat().st_ino  # one copy of the weights on disk
    phases = {p: out / "student.phases" / p for p in results}
    assert all(not problems(folder) for folder in [out / "student", *phases.values()])  # nothing written through a link
    finished = {p: (folder / MANIFEST).read_text() for p, folder in phases.items()}
    # a second run skips every phase
    assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    assert {p: (folder / MANIFEST).read_text() for p, folder in phases.items()} == finished
    # ... and one under crild run --force redoes them, to the same weights
    weights = (out / "student" / "model.safetensors").read_bytes()
    written = {p: (folder / MANIFEST).stat().st_mtime_ns for p, folder in phases.items()}
    monkeypatch.setenv(FORCED_ENV, "1")
    assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    assert all((folder / MANIFEST).stat().st_mtime_ns != written[p] for p, folder in phases.items())
    assert (out / "student" / "model.safetensors").read_bytes() == weights
    monkeypatch.delenv(FORCED_ENV)
    assert stored[0].stat().st_mtime == list((crild_home() / "tokenized").glob(
        "*/teacher_logits-*.safetensors"))[0].stat().st_mtime


def test_zero3_partitioned_teacher_gives_the_same_kd_logits(tmp_path, tiny_bert, tiny_teacher, sentiment_dir):
    """A teacher partitioned with ZeRO-3 (transformers' DeepSpeed integration) computes the
    same cached KD logits as the plain frozen teacher, and the student stays unpartitioned."""
    from safetensors.torch import load_file

    z3 = tmp_path / "zero3_fp32.json"
    z3.write_text(json.dumps({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                              "zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}))
    logits = {}
    for name, extra in (("plain", {}), ("zero3", {"teacher_deepspeed_config": str(z3)})):
        home = tmp_path / f"home-{name}"
        import os
        os.environ["CRILD_HOME"] = str(home)
        raw = tiny_run_config(tmp_path / name, tiny_bert, sentiment_dir)
        raw["stages"]["distill"] = {"preset": "kd", "teacher_model": str(tiny_teacher),
                                    "kd": {"epochs": 1, "batch_size": 8, "checkpoint_every": 50}, **extra}
        assert stage3_distill.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
        (path,) = (home / "tokenized").glob("*/teacher_logits-*.safetensors")
        logits[name] = load_file(str(path))["logits"]
    torch.testing.assert_close(logits["zero3"], logits["plain"], atol=1e-5, rtol=1e-4)


# a change of one setting -> the phases of the demo's CR-ILD (ild_supplementary, ild, kd) whose
# fingerprints it changes: those that read it, and every phase after them (which starts from them)
PHASE_CHANGES = [
    (["stages.distill.kd.epochs=3"], {"kd"}),
    (["stages.distill.kd.learning_rate=1e-3"], {"kd"}),
    (["stages.distill.temperature=4"], {"kd"}),  # read by logit_kd, a term of KD alone
    (["stages.distill.kd_terms={ce: 0.5}"], {"kd"}),
    (["stages.distill.augmented_phases=[]"], {"kd"}),
    (["stages.distill.temperature=4", "stages.distill.ild_terms={logit_kd: 1}"], {"ild_supplementary", "ild", "kd"}),
    (["stages.distill.ild.learning_rate=1e-3"], {"ild", "kd"}),
    (["stages.distill.ild.deepspeed_config=ds_configs/zero2_bf16.json"], {"ild", "kd"}),
    (["stages.distill.ild_supplementary.epochs=2"], {"ild_supplementary", "ild", "kd"}),
    (["stages.distill.mixup.alpha=0.5"], {"ild_supplementary", "ild", "kd"}),
    (["stages.distill.consistency.weight=0.2"], {"ild_supplementary", "ild", "kd"}),
    (["seed=7"], {"ild_supplementary", "ild", "kd"}),
    (["student.num_layers=2"], {"ild_supplementary", "ild", "kd"}),
    (["stages.distill.kd.log_every=1", "stages.distill.ild.checkpoint_every=7"], set()),  # bookkeeping
    (["task.max_eval_examples=100"], {"kd"}),  # KD scores the student as it trains; ILD scores nothing
    (["task.few_sample=1000"], {"ild_supplementary", "ild", "kd"}),
]


@pytest.mark.parametrize("overrides,changed", PHASE_CHANGES)
def test_a_phase_fingerprint_follows_what_the_phases_up_to_it_read(overrides, changed):
    from pipeline.config import load_config
    from pipeline.stages import phase_fingerprints

    repo = Path(__file__).resolve().parents[2]
    before, after = load_config(repo / "jobs" / "demo.yaml"), load_config(repo / "jobs" / "demo.yaml", overrides)
    assert {p for p in ("ild_supplementary", "ild", "kd")
            if phase_fingerprints(before, p)[0] != phase_fingerprints(after, p)[0]} == changed


def test_a_changed_kd_setting_keeps_the_ild_phase_and_gives_the_fresh_runs_student(tmp_path, tiny_bert, tiny_teacher,
                                                                                 sentiment_dir, capsys):
    """A KD setting changed (its epochs, the temperature) keeps the complete ILD phase, which
    KD starts from: the student equals a fresh run's bitwise, KD's earlier curves are set
    aside, and crild status says which phase crild run keeps. An ILD setting changed trains
    both phases again."""
    from safetensors.torch import load_file

    from pipeline.launch.status import stage_state, status_lines
    from pipeline.study.scoring import read_scalars

    def cfg(name, kd=None, ild=None, **distill):
        raw = tiny_run_config(tmp_path / name, tiny_bert, sentiment_dir)
        raw["pipeline"] = ["distill"]
        raw["stages"]["distill"] = {"preset": "cr-ild", "teacher_model": str(tiny_teacher), "phases": ["ild", "kd"],
                                    "ild": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, **(ild or {})},
                                    "kd": {"epochs": 1, "batch_size": 8, "log_every": 1, **(kd or {})}, **distill}
        return from_dict(raw)

    def run(config) -> str:
        capsys.readouterr()
        assert stage3_distill.run(config, stop=StopRequest(install_handlers=False)) == 0
        return capsys.readouterr().err

    out = tmp_path / "a" / "run"
    ild = out / "student.phases" / "ild" / "model.safetensors"
    run(cfg("a"))
    written = ild.stat().st_mtime_ns
    longer = cfg("a", kd={"epochs": 2}, temperature=4.0)
    assert status_lines(longer)[1:] == ["  distill  stale (written for another configuration or other inputs; crild "
                                        "run redoes it, keeping its complete phase ild)"]
    # after a stage it reads is redone (a retrained teacher), no phase is kept, and status does not say one is
    assert stage_state(longer, "distill", None, False, after=["teacher"]) == (
        "stale (written for another configuration or other inputs; crild run redoes it)")
    said = run(longer)
    assert f"ild: complete for this configuration, kept ({out / 'student.phases' / 'ild'})" in said
    assert ild.stat().st_mtime_ns == written and "kd: 96 examples, 24 optimizer steps" in said
    events = out / "tensorboard" / "student"
    assert [p.suffix for p in (events / "earlier-1").iterdir()] == [".kd"]  # KD's earlier curves, not ILD's
    assert read_scalars(events)["kd/train/loss"][-1][0] == 24 and "ild/train/loss" in read_scalars(events)
    run(cfg("b", kd={"epochs": 2}, temperature=4.0))
    a = load_file(str(out / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    said = run(cfg("a", kd={"epochs": 2}, ild={"learning_rate": 2e-3}, temperature=4.0))
    assert "kept" not in said and ild.stat().st_mtime_ns != written


@pytest.mark.parametrize("preset,target", [("cr-ild", "clean"), ("cr-ild", "ema"), ("emd-ild", "clean")])
def test_resume_is_exact(tmp_path, tiny_bert, sentiment_dir, preset, target):
    """Stopped mid-phase and resumed: the same student as without the stop (mixup draws,
    dropout, data order, the EMA copy and EMD's layer weights all continue where they were)."""
    from safetensors.torch import load_file

    def cfg(name):
        raw = tiny_run_config(tmp_path / name, tiny_bert, sentiment_dir)
        raw["stages"]["distill"] = {"preset": preset, "teacher_model": str(tiny_bert), "phases": ["ild"],
                                    "consistency": {"target": target, **({"ema_decay": 0.9} if target == "ema" else {})},
                                    "ild": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3,
                                            "checkpoint_every": 1000}}
        return from_dict(raw)

    full, split = cfg("full"), cfg("split")
    assert stage3_distill.run(full, stop=StopRequest(install_handlers=False)) == 0
    assert stage3_distill.run(split, stop=StopRequest(after_micro_steps=7, install_handlers=False)) == 75
    tag = Path(split.output_dir) / "checkpoints" / "student" / "ild" / "step00000007"
    if target == "ema":
        assert (tag / "ema.safetensors").is_file()
    if preset == "emd-ild":
        assert set(json.loads((tag / "term_state.json").read_text())) == {"emd_attention", "emd_hidden"}
    assert stage3_distill.run(split, stop=StopRequest(install_handlers=False)) == 0
    assert not (Path(split.output_dir) / "checkpoints" / "student").exists()  # every phase finished
    a = load_file(str(Path(full.output_dir) / "student" / "model.safetensors"))
    b = load_file(str(Path(split.output_dir) / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((Path(split.output_dir) / "tensorboard" / "student").glob("earlier-*"))  # curves continue
    if target == "clean":  # redone from scratch for another configuration: the earlier curves are set aside
        from pipeline.study.scoring import read_scalars

        shorter = from_dict({**full.model_dump(), "stages": {**full.stages.model_dump(), "distill": {
            **full.stages.distill.model_dump(), "ild": {**full.stages.distill.ild.model_dump(), "epochs": 1}}}})
        events = Path(full.output_dir) / "tensorboard" / "student"
        refused = from_dict({**shorter.model_dump(), "student": {**shorter.student.model_dump(), "num_layers": 99}})
        with pytest.raises(UserError, match="student.num_layers: 99"):
            stage3_distill.run(refused, stop=StopRequest(install_handlers=False))
        assert not list(events.glob("earlier-*"))  # a refused start moves nothing
        assert stage3_distill.run(shorter, stop=StopRequest(install_handlers=False)) == 0
        assert read_scalars(events)["ild/train/loss"][-1][0] <= 12  # one epoch of 12 steps
        assert read_scalars(events / "earlier-1")["ild/train/loss"][-1][0] > 12  # two


def test_consistency_target_without_dropout_is_the_eval_pass(tiny_bert):
    """clean_no_dropout: the target is the student's clean pass in eval mode; the student
    trains with dropout before and after it. clean keeps dropout on, as the reference."""
    for target, expected in (("clean", True), ("clean_no_dropout", False)):
        obj, module, _ = objective(tiny_bert, "cr-ild", consistency={"target": target})
        module.train()
        seen = []

        def spy(inputs, view=None, padded=None, run=obj.consistency.target.run, seen=seen, student=module.student):
            seen.append(student.training)
            return run(inputs, view, padded)

        obj.consistency.target.run = spy
        obj(FakeEngine(), batch(), micro_step=5)
        # the student's own mixed pass (training mode), then the clean target pass
        assert seen == [True, expected] and module.student.training


def test_a_student_not_smaller_than_its_teacher_is_noted(tiny_bert):
    teacher = build_classifier(str(tiny_bert), SPEC, "teacher")
    assert size_note(build_classifier(str(tiny_bert), SPEC, "student", num_layers=3), teacher) is None
    assert size_note(teacher, None) is None  # no teacher (the fine-tuned baseline): nothing to compare
    wider = build_classifier(str(tiny_bert), SPEC, "student", random_init=RandomInit(
        num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128))
    note = size_note(wider, teacher)
    assert note.startswith("note: the student has ") and "(2 against 4 layers, hidden 64 against 32)" in note
    ratio = sum(p.numel() for p in wider.parameters()) / sum(p.numel() for p in teacher.parameters())
    assert f", {ratio:.2f}x its teacher's " in note and ratio > 1


def test_the_distill_stage_says_once_that_its_student_is_as_large_as_its_teacher(tmp_path, tiny_bert, tiny_teacher,
                                                                                sentiment_dir, capsys):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["student"] = {"init": "folder", "backbone": str(tiny_bert)}  # all 4 layers: the teacher's shape
    small = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "checkpoint_every": 50}
    raw["stages"]["distill"] = {"preset": "tinybert", "teacher_model": str(tiny_teacher), "ild": small, "kd": small}
    assert stage3_distill.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    said = capsys.readouterr()
    assert (said.out + said.err).count("note: the student has ") == 1, said.out[-2000:]
    assert "1.00x its teacher's" in said.out + said.err



def test_the_teacher_fingerprint_reads_every_shard(tmp_path, tiny_bert):
    """The teacher-logit cache is keyed by the teacher's fingerprint. Two sharded checkpoints
    of one shape have the same index file, so a fingerprint of config and index alone (as it
    was) served one teacher's cached logits for the other; every shard's bytes count now, and a
    whole checkpoint keeps the fingerprint it had."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.distill.teacher import teacher_fingerprint

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    folders = []
    for i in range(2):
        with torch.no_grad():
            model.classifier.bias.fill_(float(i))  # another teacher of the same shape
        folders.append(tmp_path / f"sharded{i}")
        model.save_pretrained(str(folders[-1]), max_shard_size="20KB")
    index = [(f / "model.safetensors.index.json").read_text() for f in folders]
    assert len(list(folders[0].glob("model-*-of-*.safetensors"))) > 1 and index[0] == index[1]
    assert teacher_fingerprint(folders[0]) != teacher_fingerprint(folders[1])
    assert teacher_fingerprint(folders[0]) == teacher_fingerprint(folders[0])

    whole = tmp_path / "whole"  # a whole checkpoint: config then weights, as before
    model.save_pretrained(str(whole))
    digest = hashlib.sha256((whole / "config.json").read_bytes() + (whole / "model.safetensors").read_bytes())
    assert teacher_fingerprint(whole) == digest.hexdigest()[:16]


def test_a_phase_says_what_it_trains_in_words_not_python_reprs():
    """The line each phase starts with: the loss as the weighted sum of its terms, mixup and
    the consistency weight, the layer pairs; no dict or tuple repr."""
    from pipeline.distill.phase import phase_line

    ild, kd = resolve_phases(from_dict({"stages": {"distill": {"preset": "cr-ild"}}}).stages.distill)[-2:]
    assert phase_line(ild, 50, 20, [(3, 6)]) == (
        f"ild: 50 examples, 20 optimizer steps; loss 1 x qkv_relation; mixup, consistency weight {ild.consistency:g}; "
        f"layers 3<-6 (student<-teacher)")
    assert phase_line(kd, 50, 16, []) == "kd: 50 examples, 16 optimizer steps; loss 1 x logit_kd"
    assert phase_line(kd, 1, 1, []) == "kd: 1 example, 1 optimizer step; loss 1 x logit_kd"

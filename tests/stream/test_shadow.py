"""Shadow models (issue 15): a candidate in ``model_dir/candidate/`` is scored next to the
serving model on the same window-close sequences, evaluated online like it, never emitted; a
promotion rule, off by default, swaps it in after K consecutive window ends that it won."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import serving.scorer as scorer_module
from features.feedback import ModelQuality, QualityBoard, judge
from serving.scorer import load_model
from stream.model import CANDIDATE_DIR, PREVIOUS_DIR, ModelHolder, ShadowHolder, promote
from stream.processor import DictStore
from tests.support.processor import (
    MODEL_DIR,
    completed_cohorts,
    make_processor,
    messages,
    online_quality,
    run_outputs,
    synthetic,
)


def variant(target: Path, version: str, r_scale: float = 1.0, source: Path = MODEL_DIR) -> Path:
    """A copy of ``source`` under another version; with ``r_scale`` its BG/NBD prior's r (the
    customers' purchase rate shape) scaled, so it predicts differently from the same inputs."""
    shutil.copytree(source, target)
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model_version"] = version
    manifest["prior"]["bgnbd"]["r"] *= r_scale
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return target


def test_a_shadow_model_is_evaluated_next_to_the_serving_one_and_never_emitted(
    tmp_path: Path,
) -> None:
    """60 users buying at random over 30 weeks, the shipped model serving and a variant with a
    prior of half the purchase rate in the shadow: the signals are those of a run without a
    shadow, bit for bit; every settled prediction has its shadow twin; the quality of both
    versions is published for every evaluable window end, on the same users."""
    scorer = load_model(MODEL_DIR)
    shadow = load_model(variant(tmp_path / "shadow", "m-shadow", r_scale=0.5))
    frame = synthetic(seed=5)
    plain_store, store = DictStore(), DictStore()
    plain = run_outputs(make_processor(scorer, plain_store), plain_store, messages(frame), 64)
    proc = make_processor(scorer, store)
    proc.shadow = shadow
    outputs = run_outputs(proc, store, messages(frame), 64)

    def signals(outs: list) -> list:  # type: ignore[type-arg]
        return [s.to_dict() | {"emitted_at_ms": 0} for o in outs for s in o.demand + o.churn]

    assert signals(outputs) == signals(plain)
    assert all(s["model_version"] == scorer.version for s in signals(outputs))
    outcomes = [o for out in outputs for o in out.outcomes]
    serving = {(o.user_id, o.window_end_ms) for o in outcomes if not o.shadow}
    shadowed = {(o.user_id, o.window_end_ms) for o in outcomes if o.shadow}
    assert serving == shadowed and len(serving) > 200
    assert {o.model_version for o in outcomes if o.shadow} == {"m-shadow"}
    assert next(o for o in outcomes if o.shadow).to_dict()["shadow"] is True

    both = online_quality_by_version(outputs)
    assert set(both) == {scorer.version, "m-shadow"}
    assert set(both[scorer.version]) == set(both["m-shadow"]) and len(both["m-shadow"]) >= 10
    for end, figures in both[scorer.version].items():
        assert both["m-shadow"][end]["n"] == figures["n"]
    assert any(
        both["m-shadow"][e]["orders"]["mae"] != f["orders"]["mae"]
        for e, f in both[scorer.version].items()
    )
    # The serving model's quality is what it was without a shadow.
    assert online_quality(plain) == both[scorer.version]


def online_quality_by_version(outputs: list) -> dict[str, dict[int, dict]]:  # type: ignore[type-arg]
    from features.feedback import publish

    out: dict[str, dict[int, dict]] = {}  # type: ignore[type-arg]
    for end, parts in completed_cohorts(outputs):
        for record in publish(parts, 0):
            out.setdefault(record.model_version, {})[end] = dict(record.figures)
    return out


def _record(version: str, end: int, mae: float, log_loss: float) -> ModelQuality:
    figures = {"n": 10, "orders": {"mae": mae}, "spend": {}, "churn": {"log_loss": log_loss}}
    return ModelQuality(end, 13, version, 4, figures, "id", 0)


def test_promotion_needs_k_consecutive_wins_on_both_heads_and_is_off_by_default() -> None:
    board = QualityBoard()
    rounds = [
        (1, 0.9, 0.50),  # wins both
        (2, 0.9, 0.70),  # better MAE, worse log loss: not a win, the run starts again
        (3, 0.8, 0.40),
        (4, 0.8, 0.40),
        (5, 0.8, 0.40),
    ]
    seen = []
    for end, mae, log_loss in rounds:
        records = [_record("m-serving", end, 1.0, 0.6), _record("m-shadow", end, mae, log_loss)]
        evidence = judge(board, records, "m-serving", "m-shadow", promote_after=3)
        assert evidence is not None
        seen.append((evidence["beat_serving"], evidence["consecutive_window_ends"]))
        promoted = evidence["promote"]
    assert seen == [(True, [1]), (False, []), (True, [3]), (True, [3, 4]), (True, [3, 4, 5])]
    assert promoted
    off = QualityBoard()
    for end in range(1, 10):
        records = [_record("m-serving", end, 1.0, 0.6), _record("m-shadow", end, 0.5, 0.3)]
        evidence = judge(off, records, "m-serving", "m-shadow", promote_after=0)
        assert evidence is not None and not evidence["promote"]
    # No shadow, or a window end where one of the two has no record: no evidence.
    assert judge(QualityBoard(), [_record("m-serving", 1, 1.0, 0.6)], "m-serving", None, 3) is None
    only = [_record("m-shadow", 1, 0.5, 0.3)]
    assert judge(QualityBoard(), only, "m-serving", "m-shadow", 3) is None


def test_the_shadow_holder_takes_a_valid_candidate_and_refuses_the_others(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model_dir)
    serving = load_model(model_dir)
    holder = ShadowHolder(model_dir)
    assert holder.poll(serving).outcome == "unchanged" and holder.scorer is None
    # Another window grid: the per-user state could not feed it.
    variant(model_dir / CANDIDATE_DIR, "m-other-grid", source=MODEL_DIR.parent / "generated")
    reload = holder.poll(serving)
    assert reload.outcome == "failed" and "window spec" in (reload.error or "")
    shutil.rmtree(model_dir / CANDIDATE_DIR)
    # The serving version again: nothing to compare.
    shutil.copytree(MODEL_DIR, model_dir / CANDIDATE_DIR)
    reload = holder.poll(serving)
    assert reload.outcome == "failed" and "serving version" in (reload.error or "")
    shutil.rmtree(model_dir / CANDIDATE_DIR)
    variant(model_dir / CANDIDATE_DIR, "m-shadow", r_scale=0.5)
    assert holder.poll(serving).outcome == "swapped"
    assert holder.scorer is not None and holder.scorer.version == "m-shadow"
    assert holder.poll(serving).outcome == "unchanged"
    shutil.rmtree(model_dir / CANDIDATE_DIR)
    assert holder.poll(serving).outcome == "swapped" and holder.scorer is None


def test_a_promotion_deploys_the_shadow_keeps_the_replaced_model_and_the_holders_follow(
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model_dir)
    serving = ModelHolder(model_dir)
    shadow = ShadowHolder(model_dir)
    variant(model_dir / CANDIDATE_DIR, "m-shadow", r_scale=0.5)
    shadow.poll(serving.scorer)
    old = serving.version
    assert promote(model_dir) == "m-shadow"
    assert not (model_dir / CANDIDATE_DIR).exists()
    assert (
        json.loads((model_dir / PREVIOUS_DIR / "manifest.json").read_text())["model_version"] == old
    )
    assert serving.poll().outcome == "swapped" and serving.version == "m-shadow"
    # The shadow now serves: the shadow holder lets go of it.
    assert shadow.poll(serving.scorer).outcome == "swapped" and shadow.scorer is None
    assert load_model(model_dir / PREVIOUS_DIR).version == old


@pytest.mark.parametrize("vanishes_in", ["glob", "read_text", "sha256"])
def test_a_candidate_promoted_away_in_the_middle_of_a_shadow_poll_fails_that_poll_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vanishes_in: str
) -> None:
    """The promotion runs in a thread and removes ``candidate/`` while the model timer may be
    polling it: a CI run had the poll's directory listing raise FileNotFoundError, which
    crashed the worker's app. Wherever the directory vanishes, the poll returns, and the next
    one sees no candidate."""
    model_dir = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model_dir)
    serving = load_model(model_dir)
    holder = ShadowHolder(model_dir)
    candidate = model_dir / CANDIDATE_DIR
    variant(candidate, "m-shadow", r_scale=0.5)
    targets = {
        "glob": (Path, "glob"),
        "read_text": (Path, "read_text"),
        "sha256": (scorer_module, "sha256_file"),
    }
    owner, name = targets[vanishes_in]
    original = getattr(owner, name)

    def vanish_then_call(*args: Any, **kwargs: Any) -> Any:
        shutil.rmtree(candidate, ignore_errors=True)
        if owner is Path and args and not str(args[0]).startswith(str(candidate)):
            return original(*args, **kwargs)
        raise FileNotFoundError(2, "No such file or directory", str(candidate))

    monkeypatch.setattr(owner, name, vanish_then_call)
    reload = holder.poll(serving)
    monkeypatch.undo()
    assert reload.outcome in ("unchanged", "failed") and holder.scorer is None
    assert holder.poll(serving).outcome == "unchanged" and holder.scorer is None


@pytest.fixture(autouse=True)
def _no_stray_candidates() -> None:
    """The shipped model directory never gets a candidate from these tests."""
    assert not (MODEL_DIR / CANDIDATE_DIR).exists()

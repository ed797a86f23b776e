"""Loading an experiment's runs from tables or records, and the published study's runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repro_lits import results as results_tables
from repro_lits import stats
from repro_lits.errors import UserInputError
from repro_lits.report_inputs import find_experiments, load_experiment_results, load_published_runs


def test_records_loader_builds_tables(study_results):
    results = load_experiment_results(study_results)
    assert results.name == "tiny"
    assert "run records" in results.source
    assert len(results.runs) == 8
    assert results.runs["run_id"].tolist()[:2] == ["random-000", "random-001"]
    random = results.runs[results.runs["setup"] == "random"]
    assert random["iou_liver"].tolist() == pytest.approx([0.80, 0.82, 0.86])
    assert random["torch_version"].tolist() == ["2.5.1"] * 3
    assert len(results.volumes) == 16
    assert results.volumes["iou_tumor"].isna().sum() == 8
    assert results.config["training"]["epochs"] == 2
    assert results.empty_class_rule.startswith("a class absent")


def test_parquet_loader_preferred(study_results):
    from_records = load_experiment_results(study_results, "tiny")
    changed = from_records.runs.copy()
    changed.loc[changed["run_id"] == "random-000", "iou_liver"] = 0.5
    changed.to_parquet(study_results / "tiny" / "runs.parquet", index=False)
    from_volumes = from_records.volumes
    from_volumes.to_parquet(study_results / "tiny" / "volumes.parquet", index=False)

    results = load_experiment_results(study_results, "tiny")
    assert "runs.parquet" in results.source
    assert results.runs.loc[results.runs["run_id"] == "random-000", "iou_liver"].item() == 0.5
    assert len(results.volumes) == 16
    assert results.config is not None


def test_unreadable_record_skipped(study_results):
    (study_results / "tiny" / "runs" / "seed-001" / "record.json").write_text("{not json", encoding="utf-8")
    results = load_experiment_results(study_results, "tiny")
    assert len(results.runs) == 7
    assert results.skipped_records == (str(study_results / "tiny" / "runs" / "seed-001" / "record.json"),)


def test_missing_results_folder(tmp_path):
    with pytest.raises(UserInputError, match=r"not found; run `repro-lits run` first"):
        load_experiment_results(tmp_path / "absent")


def test_empty_results_folder(tmp_path):
    (tmp_path / "results" / "cpu" / "runs").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"contains no run records; run `repro-lits run` first"):
        load_experiment_results(tmp_path / "results")


def test_unknown_experiment(study_results):
    with pytest.raises(UserInputError, match=r"experiment 'paper' not found .* expected one of \['tiny'\]"):
        load_experiment_results(study_results, "paper")


def test_several_experiments_need_a_choice(study_results):
    (study_results / "other" / "runs" / "seed-000").mkdir(parents=True)
    (study_results / "other" / "runs" / "seed-000" / "record.json").write_text(
        '{"setup": "seed", "run_id": "seed-000"}', encoding="utf-8"
    )
    assert find_experiments(study_results) == ["other", "tiny"]
    with pytest.raises(UserInputError, match="choose one with --experiment"):
        load_experiment_results(study_results)


def test_published_runs_match_published_summary():
    runs = load_published_runs()
    assert runs["setup"].value_counts().to_dict() == {"random": 9, "seed": 10, "deterministic": 10}
    summaries = {(s.setup, s.class_name): s for s in stats.summarize_runs(runs, resamples=200)}
    # Published table: liver mean and std per setup, and the deterministic runs all equal.
    assert summaries[("random", "liver")].mean == pytest.approx(0.8226, abs=5e-5)
    assert summaries[("random", "liver")].std == pytest.approx(0.0157, abs=5e-5)
    assert summaries[("seed", "liver")].std == pytest.approx(0.0113, abs=5e-5)
    assert summaries[("seed", "tumor")].std == pytest.approx(0.0505, abs=5e-5)
    assert summaries[("random", "tumor")].minimum == pytest.approx(0.2863, abs=5e-5)
    assert summaries[("deterministic", "tumor")].std == 0.0
    assert summaries[("deterministic", "tumor")].mean == pytest.approx(0.4961139)
    assert np.isfinite(runs["iou_mean"]).all()
    assert isinstance(runs, pd.DataFrame)


def test_tables_written_by_results_module_load_alike(study_results):
    from_records = load_experiment_results(study_results, "tiny")
    results_tables.write_tables(study_results / "tiny")
    from_tables = load_experiment_results(study_results, "tiny")
    assert "runs.parquet" in from_tables.source
    assert from_tables.runs["run_id"].tolist() == from_records.runs["run_id"].tolist()
    assert stats.summarize_runs(from_tables.runs, resamples=200) == stats.summarize_runs(from_records.runs, resamples=200)
    assert stats.bitwise_identity(from_tables.runs) == stats.bitwise_identity(from_records.runs)
    assert len(from_tables.volumes) == len(from_records.volumes)


def test_out_of_date_table_replaced_by_records(study_results, builder):
    results_tables.write_tables(study_results / "tiny")
    builder.write_run(study_results / "tiny", setup="seed", run_index=2, iou=builder.iou(0.97, 0.9, 0.4),
                      predictions=builder.base_predictions(), weights=builder.base_weights())
    results = load_experiment_results(study_results, "tiny")
    assert "runs.parquet is out of date" in results.source
    assert len(results.runs) == 9
    assert "seed-002" in set(results.runs["run_id"])

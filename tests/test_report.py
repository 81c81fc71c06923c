"""The run report: a fake but complete run layout in, HTML + PNGs + report_data.json out, numbers checked."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from mak_ray import storage
from mak_ray.evaluate.metrics import compute_metrics
from mak_ray.evaluate.results import write_results
from mak_ray.layout import RunLayout
from mak_ray.report import build_report
from mak_ray.report.collect import RunData, tail_classes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET = {"a": 40, "b": 25, "c": 10, "d": 4}
GROUPS = {"a": "many", "b": "medium", "c": "few", "d": "few"}  # many > 30, few < 12


def _pool_labels() -> dict[str, str]:
    """100 scored pool rows: 80 in-distribution (20 per class), 20 OOD (10 noise, 10 texture)."""
    labels = {}
    for i in range(80):
        labels[f"p{i:03d}"] = "abcd"[i % 4]
    for i in range(80, 100):
        labels[f"p{i:03d}"] = "ood-noise" if i % 2 else "ood-texture"
    return labels


def _ids_with(labels: dict[str, str], wanted: list[str]) -> list[str]:
    """First unused pool id for each wanted label, in order."""
    used: set[str] = set()
    out = []
    for w in wanted:
        pid = next(k for k, v in labels.items() if v == w and k not in used)
        used.add(pid)
        out.append(pid)
    return out


def _selection(ids: list[str], rng: np.random.Generator) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "order": pa.array(np.arange(n), pa.int64()),
            "ecle": pa.array(rng.random(n), pa.float32()),
            "proximity": pa.array(rng.random(n), pa.float32()),
            "score": pa.array(rng.random(n), pa.float32()),
        }
    )


def _metrics(correct_per_class: dict[str, int]) -> dict:
    """A real compute_metrics result: 10 test images per class, ``correct_per_class[c]`` right."""
    y_true, y_pred = [], []
    for c in "abcd":
        y_true += [c] * 10
        y_pred += [c] * correct_per_class[c] + ["a" if c != "a" else "b"] * (10 - correct_per_class[c])
    return compute_metrics(np.array(y_true), np.array(y_pred), GROUPS)


def write_fake_run(run: str, *, with_eval: bool = True, with_timings: bool = True) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    layout = RunLayout(run)
    storage.write_text(
        layout.config,
        yaml.safe_dump({"evaluate": {"many_threshold": 30, "few_threshold": 12}, "select": {"budget": 10}}),
    )
    # target embeddings: labels + one failed row that must not be counted
    t_labels = [c for c, n in TARGET.items() for _ in range(n)] + ["a"]
    n_t = len(t_labels)
    storage.write_parquet(
        pa.table(
            {
                "id": [f"t{i}" for i in range(n_t)],
                "label": t_labels,
                "embedding": pa.array([[0.0] * 4] * n_t, pa.list_(pa.float32())),
                "error": [None] * (n_t - 1) + ["decode_error"],
            }
        ),
        layout.target_embeddings.part("0", "part-0.parquet"),
    )
    storage.write_json(layout.target_embeddings.summary, {"rows": n_t})
    # pool scores in two shards, plus one failed row
    labels = _pool_labels()
    ids = list(labels)
    emb_type = pa.list_(pa.float16(), 4)
    for sid, chunk in (("0", ids[:50]), ("1", ids[50:])):
        n = len(chunk)
        cols = {
            "id": pa.array(chunk, pa.string()),
            "ecle": pa.array(rng.random(n), pa.float32()),
            "proximity": pa.array(rng.random(n), pa.float32()),
            "embedding": pa.array([[0.5] * 4] * n, emb_type),
            "label": pa.array([labels[i] for i in chunk], pa.string()),
            "error": pa.array([None] * n, pa.string()),
            "shard": pa.array([sid] * n, pa.string()),
        }
        if sid == "1":
            for k, v in (("id", "bad"), ("label", "a"), ("error", "decode_error"), ("shard", "1")):
                cols[k] = pa.concat_arrays([cols[k], pa.array([v], pa.string())])
            for k in ("ecle", "proximity"):
                cols[k] = pa.concat_arrays([cols[k], pa.array([None], pa.float32())])
            cols["embedding"] = pa.concat_arrays([cols["embedding"], pa.array([None], emb_type)])
        storage.write_parquet(pa.table(cols), layout.scores.part(sid, "part-0.parquet"))
    storage.write_json(layout.scores.summary, {"inputs": 101, "scored": 100, "failed": 1})
    # selections: mak = 1 OOD + 6 tail (c/d) + 3 head; random = 4 OOD + 1 tail + 5 head
    picks = {
        "mak": _ids_with(labels, ["c", "d", "ood-noise", "c", "d", "c", "a", "d", "b", "a"]),
        "random": _ids_with(
            labels, ["ood-noise", "a", "b", "ood-texture", "a", "c", "ood-noise", "b", "ood-texture", "a"]
        ),
    }
    for method, sel_ids in picks.items():
        out = layout.selection(method)
        storage.write_parquet(_selection(sel_ids, rng), out.parquet)
        storage.write_text(out.text, "\n".join(sel_ids) + "\n")
        storage.write_json(out.summary, {"method": method, "budget": 10, "candidates": 100})
    if with_eval:
        # target_only and mak complete; random lacks the few-shot setting (must show n/a, not fail)
        for model, full, few in (
            ("target_only", {"a": 9, "b": 8, "c": 3, "d": 1}, {"a": 8, "b": 6, "c": 2, "d": 1}),
            ("mak", {"a": 9, "b": 8, "c": 6, "d": 5}, {"a": 8, "b": 7, "c": 4, "d": 3}),
            ("random", {"a": 9, "b": 8, "c": 4, "d": 2}, None),
        ):
            results = {"full": _metrics(full), "groups": {"assignment": GROUPS}}
            if few is not None:
                results["few_shot"] = _metrics(few)
            write_results(results, layout.metrics_json(model), layout.metrics_md(model), model)
    if with_timings:
        storage.write_json(
            layout.timings,
            {"stages": {"pretrain": 12.5, "embed_target": 1.0, "score": 7.25, "select": 0.5}},
        )
    storage.write_json(layout.summary, {"inputs": 101, "scored": 100, "selected": {"mak": 10}})
    return picks


def _row(html_text: str, first_cell: str) -> str:
    m = re.search(rf"<tr><td>{re.escape(first_cell)}</td>(.*?)</tr>", html_text)
    assert m, f"no table row for {first_cell!r}"
    return m.group(1)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row)


def test_report_of_complete_run(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run)
    index = build_report(run)
    assert index == RunLayout(run).report_file("index.html")
    page = Path(index).read_text()

    # selection table: images, budget, OOD, OOD share, tail, tail share, not in pool
    assert _cells(_row(page, "mak")) == ["10", "10", "1", "10.0%", "6", "60.0%", "0"]
    assert _cells(_row(page, "random")) == ["10", "10", "4", "40.0%", "1", "10.0%", "0"]
    # pool: 100 scored (the failed row excluded), 20 OOD, 40 tail (c and d: 20 each)
    assert _cells(_row(page, "pool (all scored)"))[:6] == ["100", "", "20", "20.0%", "40", "40.0%"]
    assert "Missing parts" not in page

    # accuracy: mak full-shot overall = (9+8+6+5)/40, few group = mean(60%, 50%); random few-shot missing
    # a method's rows: the selection table, the OOD-kind table, the select-stage table, the accuracy table
    assert len(re.findall(r"<tr><td>mak</td>", page)) == 4
    acc_rows = re.findall(r"<tr><td>mak</td>(.*?)</tr>", page)
    # OOD share per kind (ood-noise, ood-texture): mak 1 noise of 10 picks, random 2 + 2, the pool 10 + 10 of 100
    assert _cells(acc_rows[1]) == ["10.0% (1)", "0.0% (0)"]
    random_rows = re.findall(r"<tr><td>random</td>(.*?)</tr>", page)
    assert _cells(random_rows[1]) == ["20.0% (2)", "20.0% (2)"]
    assert _cells(re.findall(r"<tr><td>pool \(all scored\)</td>(.*?)</tr>", page)[1]) == ["10.0% (10)"] * 2
    assert _cells(acc_rows[2])[0] == "100"  # select stage: the summary's candidate count
    mak_acc = _cells(acc_rows[3])
    assert mak_acc[0] == "70.00" and mak_acc[3] == "55.00"
    random_acc = _cells(random_rows[3])
    assert random_acc[:6] != ["n/a"] * 6 and random_acc[6:] == ["n/a"] * 6
    assert "target_only (no additions)" in page

    # embedded images are real PNGs, also written beside the page
    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(blobs) == 6
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in blobs)
    report_dir = Path(RunLayout(str(tmp_path / "run")).report_dir)
    for name in (
        "class_histograms.png",
        "ood_share.png",
        "tail_share.png",
        "ecle_vs_proximity.png",
        "accuracy_groups.png",
        "stage_times.png",
    ):
        assert (report_dir / name).read_bytes().startswith(PNG_MAGIC), name
    assert "http://" not in page and "https://" not in page  # self-contained

    data = json.loads((report_dir / "report_data.json").read_text())
    assert data["selections"]["mak"]["ood_share"] == 0.1
    assert data["selections"]["random"]["ood_share"] == 0.4
    assert data["selections"]["mak"]["tail_share"] == 0.6
    assert data["selections"]["mak"]["class_counts"] == {"a": 2, "b": 1, "c": 3, "d": 3, "ood-noise": 1}
    assert data["target_counts"] == TARGET
    assert data["pool"]["failed"] == 1 and data["pool"]["scored"] == 100
    assert data["tail"]["classes"] == ["c", "d"]
    assert data["accuracy"]["mak"]["full"]["few"] == pytest.approx(0.55)
    assert data["accuracy"]["random"]["few_shot"]["overall"] is None
    assert data["timings"] == {"pretrain": 12.5, "embed_target": 1.0, "score": 7.25, "select": 0.5}
    assert data["missing"] == []
    assert [c["holds"] for c in data["checks"]] == [True, True, True, None]  # random has no few-shot result
    assert {c["method"] for c in data["checks"]} == {"mak"}
    assert [c["value"] for c in data["checks"][:2]] == [0.6, 0.1]
    assert "Expected outcomes (mak vs random)" in page
    assert data["ood_kinds"] == ["ood-noise", "ood-texture"]
    assert data["selections"]["random"]["ood_kinds"]["ood-texture"] == {"count": 2, "share": 0.2}
    assert data["pool"]["ood_kinds"]["ood-noise"] == {"count": 10, "share": 0.1}
    # a run scored without diagnostics still gets its report, saying so
    assert data["diagnostics"] is None and "No score diagnostics" in page and "class='warning'" not in page


def test_report_lists_missing_parts(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    write_fake_run(run, with_eval=False, with_timings=False)
    out = str(tmp_path / "elsewhere")
    index = build_report(run, out)
    assert index == storage.join(out, "index.html")
    page = Path(index).read_text()
    assert "Missing parts" in page
    assert "evaluate" in page and "timings.json" in page
    assert _cells(_row(page, "random"))[3] == "40.0%"  # what exists is still shown
    data = json.loads((tmp_path / "elsewhere" / "report_data.json").read_text())
    assert data["accuracy"] == {} and data["timings"] is None
    # without metrics the tail comes from config.yaml's few_threshold (12): c (10) and d (4)
    assert data["tail"]["classes"] == ["c", "d"] and "few_threshold" in data["tail"]["rule"]
    assert not (tmp_path / "elsewhere" / "accuracy_groups.png").exists()


def test_report_of_empty_run_does_not_fail(tmp_path: Path) -> None:
    index = build_report(str(tmp_path / "nothing"))
    page = Path(index).read_text()
    assert "Missing parts" in page and "pool scores" in page and "target labels" in page


def test_tail_falls_back_to_lower_half_of_target_counts() -> None:
    data = RunData(run_uri="x", target_counts={"a": 50, "b": 30, "c": 20, "d": 9, "e": 3})
    classes, rule = tail_classes(data)
    assert classes == ["d", "e"] and "lower half" in rule


def test_report_on_s3(s3_bucket: str) -> None:
    run = storage.join(s3_bucket, "runs", "r1")
    write_fake_run(run, with_eval=False)
    index = build_report(run)
    assert index == f"{s3_bucket}/runs/r1/report/index.html"
    page = storage.read_text(index)
    assert _cells(_row(page, "mak"))[3] == "10.0%"
    assert storage.read_bytes(RunLayout(run).report_file("ood_share.png")).startswith(PNG_MAGIC)
    assert (
        storage.read_json(RunLayout(run).report_file("report_data.json"))["selections"]["random"]["ood"] == 4
    )

"""The benchmark JSON -> Markdown renderer, on a small synthetic run with round numbers."""

import copy
import json

import pytest

from fastcnn import benchreport

CONV = "conv2d forward, mnist_cnn conv2: x(64,26,26,32) 3x3 valid F=64"
RELU = "relu forward, mnist_cnn relu2: x(64,24,24,64)"
TRAIN = "mnist_cnn train_on_batch, batch 64"


def bench(group, impl, median, gflop, *, kind="op", gemm_like=True, **extra):
    return {
        "group": group,
        "name": f"test_x[{impl}]",
        "fullname": f"benchmarks/test_x.py::test_x[{impl}]",
        "extra_info": {"kind": kind, "impl": impl, "gflop": gflop, "gemm_like": gemm_like, **extra},
        "stats": {"median": median, "min": median * 0.9, "mean": median, "rounds": 5},
    }


@pytest.fixture
def run():
    return {
        "datetime": "2026-03-14T12:30:00.000000+00:00",
        "machine_info": {
            "cpu": {"brand_raw": "ignored when fastcnn's own record is present"},
            "fastcnn": {
                "cpu_model": "Test CPU 9000", "cores": 4, "usable_cores": 2, "threads": 2,
                "python": "3.11.9", "numpy": "2.4.6", "numba": "0.68.1", "torch": "2.13.0",
                "blas": "openblas 0.3.31 (Haswell)", "small": False,
            },
        },
        "benchmarks": [
            bench("sgemm 2048x2048 @ 2048x2048", "numpy", 0.25, 20.0, kind="peak"),  # 80 GFLOP/s
            bench(CONV, "reference", 2.0, 2.0),
            bench(CONV, "numba", 0.04, 2.0),  # out of order on purpose: rows are sorted by impl
            bench(CONV, "numpy", 0.05, 2.0),
            bench(RELU, "numpy", 0.001, 0.001, gemm_like=False, reference="skipped: about 9 s per call"),
            bench(RELU, "numba", 0.0005, 0.001, gemm_like=False, reference="skipped: about 9 s per call"),
            bench(TRAIN, "numpy", 0.3, 6.0, kind="model"),
            bench(TRAIN, "numba", 0.2, 6.0, kind="model"),
            bench(TRAIN, "torch", 0.1, 6.0, kind="model"),
        ],
    }


def table_rows(text, section):
    """Cells of each data row of the table under ``### section``."""
    lines = text.split(f"### {section}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert lines[0].startswith("| benchmark |") and lines[1].startswith("|---")
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_header_names_the_date_machine_and_peak(run):
    text = benchreport.render_markdown(run)
    assert text.startswith("## Performance\n")
    assert "Measured on 2026-03-14 on Test CPU 9000, 4 cores (2 usable), 2 threads" in text
    for piece in ("Python 3.11.9", "NumPy 2.4.6", "Numba 0.68.1", "PyTorch 2.13.0", "BLAS: openblas 0.3.31 (Haswell)"):
        assert piece in text
    assert "Float32 matmul peak (sgemm 2048x2048 @ 2048x2048, NumPy): **80 GFLOP/s**" in text
    assert "Smoke-test" not in text


def test_ops_table_values(run):
    rows = table_rows(benchreport.render_markdown(run), "Ops")
    assert rows[:3] == [
        [CONV, "reference", "2 s", "baseline", "1", "1.2%"],
        ["", "NumPy", "50 ms", "40× vs reference", "40", "50.0%"],
        ["", "Numba", "40 ms", "50× vs reference", "50", "62.5%"],
    ]
    # No reference at this shape: NumPy is the baseline, the group is footnoted,
    # and memory-bound ops get no share of the matmul peak.
    assert rows[3:] == [
        [RELU + " ¹", "NumPy", "1 ms", "baseline", "1", "—"],
        ["", "Numba", "500 µs", "2× vs NumPy", "2", "—"],
    ]


def test_end_to_end_table_reads_against_pytorch(run):
    text = benchreport.render_markdown(run)
    assert text.index("### End to end") < text.index("### Ops")
    assert table_rows(text, "End to end") == [
        [TRAIN, "NumPy", "300 ms", "baseline", "20", "25.0%"],
        ["", "Numba", "200 ms", "1.5× vs NumPy", "30", "37.5%"],
        ["", "PyTorch", "100 ms", "3× vs NumPy", "60", "75.0%"],
    ]
    assert "¹ The reference was not run at this shape" in text


def test_without_peak_there_is_no_share(run):
    run["benchmarks"] = [b for b in run["benchmarks"] if b["extra_info"]["kind"] != "peak"]
    text = benchreport.render_markdown(run)
    assert "No float32 matmul peak was measured" in text
    assert all(row[5] == "—" for row in table_rows(text, "Ops"))
    assert table_rows(text, "Ops")[1][4] == "40"  # GFLOP/s does not need the peak


def test_minimal_json_renders(run):
    run.pop("machine_info")
    run.pop("datetime")
    run["benchmarks"] = [bench("lonely group | with a pipe", "numba", 0.003, 0.0)]
    text = benchreport.render_markdown(run)
    assert "Measured on an unknown date on an unknown CPU" in text
    assert table_rows(text, "Ops") == [["lonely group \\| with a pipe", "Numba", "3 ms", "—", "—", "—"]]


def test_large_speedups_are_written_out(run):
    run["benchmarks"] = [bench("g", "reference", 2.24, 1.0), bench("g", "numba", 0.002, 1.0)]
    rows = table_rows(benchreport.render_markdown(run), "Ops")
    assert rows[1][3] == "1,120× vs reference"
    assert rows[1][4] == "500"


def test_small_runs_are_flagged(run):
    run["machine_info"]["fastcnn"]["small"] = True
    assert "these times mean nothing" in benchreport.render_markdown(run)


def test_annotate_writes_derived_figures(run):
    annotated = benchreport.annotate(copy.deepcopy(run))
    extra = {(b["group"], b["extra_info"]["impl"]): b["extra_info"] for b in annotated["benchmarks"]}
    numba = extra[CONV, "numba"]
    assert numba["gflops"] == pytest.approx(50.0)
    assert numba["speedup"] == pytest.approx(50.0)
    assert numba["baseline"] == "reference"
    assert numba["peak_share"] == pytest.approx(0.625)
    assert numba["peak_gflops"] == pytest.approx(80.0)
    assert extra[RELU, "numba"]["peak_share"] is None
    assert extra[TRAIN, "torch"]["speedup"] == pytest.approx(3.0)


@pytest.mark.parametrize("seconds,text", [(2.0, "2 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"), (7e-8, "70 ns"), (None, "—")])
def test_format_time(seconds, text):
    assert benchreport.format_time(seconds) == text


def test_main_renders_a_file(run, tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(run))
    assert benchreport.main([str(path), "--markdown"]) == 0
    assert capsys.readouterr().out == benchreport.render_markdown(run)
    out = tmp_path / "table.md"
    assert benchreport.main([str(path), "--markdown", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == benchreport.render_markdown(run)


def test_main_rejects_bad_input(tmp_path, capsys):
    assert benchreport.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": []}))
    assert benchreport.main([str(path)]) == 2
    assert "not a pytest-benchmark JSON file" in capsys.readouterr().err


def test_environment_describes_this_machine():
    env = benchreport.environment(threads=2)
    assert env["cpu_model"] and env["cores"] >= 1 and env["threads"] == 2
    assert env["numpy"].count(".") >= 1


def test_against_pytorch_table_gives_images_per_second_and_the_ratio(run):
    for b in run["benchmarks"]:
        if b["group"] == TRAIN:
            b["extra_info"]["batch"] = 64
    rows = table_rows(benchreport.render_markdown(run), "fastcnn against PyTorch")
    assert rows == [[TRAIN, "320", "640", "**0.50×**"]]  # 64 / 0.2 s, 64 / 0.1 s, 0.1 / 0.2


def test_memory_table_shares_of_pytorch(run):
    group = "mnist_cnn training peak memory, batch 64"
    run["benchmarks"] += [bench(group, "numba", 5.0, None, kind="memory", gemm_like=False, peak_rss_mb=210.0),
                          bench(group, "torch", 6.0, None, kind="memory", gemm_like=False, peak_rss_mb=420.0)]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Memory") == [[group, "Numba", "210 MB", "50%"], [group, "PyTorch", "420 MB", "100%"]]
    assert "### Other" not in text


def test_under_load_table_compares_the_default_with_one_thread_and_pytorch(run):
    group = "tutorial_cnn train_on_batch, batch 64, 2 busy processes"
    run["benchmarks"] += [bench(group, "numba", 0.0044, 0.1, kind="contention"),
                          bench(group, "numba-1", 0.004, 0.1, kind="contention"),
                          bench(group, "numba-all", 0.032, 0.1, kind="contention"),
                          bench(group, "torch", 0.011, 0.1, kind="contention")]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Under load") == [[group, "4.4 ms", "4 ms", "32 ms", "11 ms", "1.10", "**2.50×**", "—"]]
    assert "### Other" not in text


def test_under_load_table_reads_the_rows_interleaved_with_the_default(run):
    group = "mnist_cnn predict, batch 64, 2 busy processes"
    run["benchmarks"] += [bench(group, "numba", 0.05, 0.1, kind="contention",
                                interleaved={"numba-1": 0.08, "numba-all": 0.04, "torch": 0.1})]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Under load") == [[group, "50 ms", "80 ms", "40 ms", "100 ms", "1.25", "**2.00×**", "—"]]


def test_under_load_table_gives_the_ratio_of_means_too(run):
    """Under load each row's times fall into two groups and a median lands in either: the
    table also compares the rows' mean times, when the benchmark recorded them."""
    group = "tutorial_cnn train_on_batch, batch 64, 2 busy processes"
    run["benchmarks"] += [bench(group, "numba", 0.0055, 0.1, kind="contention",
                                interleaved={"numba-1": 0.003, "numba-all": 0.0062, "torch": 0.012},
                                means={"numba": 0.0052, "numba-1": 0.0050, "numba-all": 0.0068, "torch": 0.03})]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Under load") == [[group, "5.5 ms", "3 ms", "6.2 ms", "12 ms", "1.83", "**2.18×**",
                                               "1.04"]]
    assert '"default / best, means" is the same ratio of mean times' in text


def test_under_load_ratio_of_means_carries_its_standard_error(run):
    """With the rows' standard errors recorded, the ratio of means shows its own: the two rows'
    relative errors combined (0.0052/0.0050 = 1.04; relative errors 0.0002/0.0052 and 0.0001/0.0050,
    combined 0.0434, times 1.04: 0.045)."""
    group = "tutorial_cnn train_on_batch, batch 64, 2 busy processes"
    run["benchmarks"] += [bench(group, "numba", 0.0055, 0.1, kind="contention",
                                interleaved={"numba-1": 0.003, "numba-all": 0.0062},
                                means={"numba": 0.0052, "numba-1": 0.0050, "numba-all": 0.0068},
                                stderr={"numba": 0.0002, "numba-1": 0.0001, "numba-all": 0.0003})]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Under load")[0][-1] == "1.04 ± 0.05"
    assert "± is its standard error" in text


def test_quiet_interleaved_cells_get_their_own_table(run):
    loaded = "vgg_mini predict, batch 64, 2 busy processes"
    quiet = "vgg_mini predict, batch 64, quiet, interleaved"
    run["benchmarks"] += [bench(loaded, "numba", 0.02, 0.1, kind="contention", load_processes=2,
                                interleaved={"numba-1": 0.03, "numba-all": 0.025, "torch": 0.04}),
                          bench(quiet, "numba", 0.006, 0.1, kind="contention", load_processes=0,
                                interleaved={"numba-1": 0.01, "numba-all": 0.0055, "torch": 0.0075})]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "Under load") == [[loaded, "20 ms", "30 ms", "25 ms", "40 ms", "1.00", "**2.00×**", "—"]]
    assert table_rows(text, "Quiet machine, interleaved") == [
        [quiet, "6 ms", "10 ms", "5.5 ms", "7.5 ms", "1.09", "**1.25×**"]]
    assert "FASTCNN_BENCH_LOAD=0" in text.split("### Quiet machine, interleaved", 1)[1]


def test_against_onnxruntime_table(run):
    predict = "mnist_cnn predict, batch 64"
    run["benchmarks"] += [bench(predict, "numba", 0.004, 1.0, kind="model", batch=64),
                          bench(predict, "onnxruntime", 0.002, 1.0, kind="model", batch=64)]
    text = benchreport.render_markdown(run)
    assert table_rows(text, "fastcnn against ONNX Runtime") == [[predict, "16,000", "32,000", "**0.50×**"]]
    assert "ONNX Runtime runs `model.export_onnx`'s graph" in text
    assert [r[1] for r in table_rows(text, "End to end") if r[0] in (predict, "")][-2:] == ["Numba", "ONNX Runtime"]

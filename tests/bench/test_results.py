"""bench/results/ holds the latest full run per machine and scale: one report pair named by the machine's slug
(and the scale, for `raiox bench --scale`)."""

import json

from bench.run import RESULTS_DIR, result_files


def test_a_full_run_replaces_its_machines_report():
    assert result_files("amd-epyc-avx512vnni-2c-24gb") == (RESULTS_DIR / "amd-epyc-avx512vnni-2c-24gb.json",
                                                           RESULTS_DIR / "amd-epyc-avx512vnni-2c-24gb.md")


def test_a_scale_run_has_its_own_report_beside_the_machines_full_run():
    assert result_files("amd-epyc-avx512vnni-2c-24gb", "1m") == (RESULTS_DIR / "amd-epyc-avx512vnni-2c-24gb-1m.json",
                                                                 RESULTS_DIR / "amd-epyc-avx512vnni-2c-24gb-1m.md")


def test_results_hold_one_full_report_pair_per_machine():
    reports = sorted(RESULTS_DIR.glob("*.json"))
    assert reports
    assert sorted(p.name for p in RESULTS_DIR.iterdir()) == sorted(
        name for p in reports for name in (p.name, p.with_suffix(".md").name))
    for path in reports:
        report = json.loads(path.read_text())
        assert result_files(report["machine"]["slug"], report.get("scale"))[0] == path
        assert report["quick"] is False

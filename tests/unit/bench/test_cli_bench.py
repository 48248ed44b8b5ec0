"""bench.cli's report: the ratios issue 14 judges the CLI by, from p50s of the same run."""

from __future__ import annotations

from bench import cli


def test_the_ratios_are_p50_over_the_same_runs_kubectl_p50() -> None:
    samples = {name: [1.0, 1.0, 9.0] for name in cli.commands(["kubectl"], "ns")}
    samples["kubectl_get_all"] = [0.1, 0.1, 5.0]
    samples["kubectl_get_name"] = [0.2, 0.2, 0.2]
    samples["nest_get_functions"] = [0.2, 0.3, 0.3]
    samples["nest_get_function_name"] = [0.3, 0.3, 0.3]
    samples["nest_invoke"] = [0.4, 0.4, 0.1]
    report = cli.report_of(samples).as_dict()
    assert report["bench"] == "cli"
    ratios = report["ratios"]
    assert isinstance(ratios, dict)
    assert ratios["nest_get_over_kubectl_get"] == 3.0
    assert ratios["nest_get_name_over_kubectl_get_name"] == 1.5
    assert ratios["nest_invoke_over_kubectl_get"] == 4.0
    baselines = report["baselines"]
    assert isinstance(baselines, dict)
    assert baselines["kubectl_get_all_p50_ms"] == 100.0
    assert "nest_invoke_p50_ms" in report["results"]  # type: ignore[operator]


def test_every_command_is_run_with_the_namespace_and_the_same_function() -> None:
    argvs = cli.commands(["kubectl", "--kubeconfig=k"], "bench-x")
    assert argvs["kubectl_get_name"][-4:] == ["sbxd", cli.FUNCTION, "-n", "bench-x"]
    for name, argv in argvs.items():
        if name.startswith("nest_") and name != "nest_help":
            assert argv[-2:] == ["-n", "bench-x"]

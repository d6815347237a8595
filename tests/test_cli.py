"""The command line: ``--help`` texts, a tiny train → convert → refine run, reproducibility, one-line errors
(``BAD_COMMAND_LINES``: one line on stderr, status 2, the flag named, no traceback, no output written).

Commands run in-process through ``gan2flow.cli.main`` (no interpreter start-up, TensorFlow imported
once); two tests start ``python -m gan2flow --help`` and the console script in a subprocess to check the
entry points, and that they keep TensorFlow's C++ start-up log off stderr unless ``GAN2FLOW_TF_LOG=1``.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gan2flow
from gan2flow import _startup, cli, models

# Each subcommand's --help must mention these options (and carry examples).
HELP_OPTIONS = {
    "train": ["--data", "--toy", "--loss", "--objective", "--epochs", "--batch-size", "--latent-dim",
              "--d-learning-rate", "--sigma-min", "--sigma-max", "--out", "--seed"],
    "convert": ["--generator", "--discriminator", "--data", "--loss", "--steps", "--out", "--output", "--seed"],
    "refine": ["--flow", "--n", "--out", "--space", "--no-refine", "--seed", "--batch-size", "--levels",
               "--step-scale"],
    # The loss comparison's discriminator trainings, its budget-dependent default (DSM at the full budget).
    "compare": ["--quick", "--discriminator-training", "sd_dsm", "--parametrisation", "--seeds"],
}


@pytest.mark.parametrize("command", sorted(HELP_OPTIONS))
def test_help_explains_each_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [option for option in HELP_OPTIONS[command] if option not in text]
    assert not missing, missing
    assert "examples:" in text and f"gan2flow {command} " in text


# TensorFlow's C++ start-up log: absl/TF log lines (I0000/W0000/E0000 ...), oneDNN and CPU notes, cuInit.
_TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |cuInit|oneDNN|rebuild TensorFlow|absl::InitializeLog", re.MULTILINE)


def _environment(**variables):
    """This process's environment without the variables that quieten or show TensorFlow's log, plus ``variables``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", _startup.SHOW_LOG_VARIABLE)}
    return dict(env, **variables)


def test_python_dash_m_help_lists_the_subcommands_quietly():
    result = subprocess.run([sys.executable, "-m", "gan2flow", "--help"], capture_output=True, text=True,
                            timeout=600, env=_environment())
    assert result.returncode == 0, result.stderr
    for command in ("demo", "train", "convert", "refine"):
        assert command in result.stdout
    assert "GAN2FLOW_TF_LOG=1" in result.stdout
    assert not _TF_LOG_LINE.search(result.stderr), result.stderr


@pytest.mark.slow  # the same start-up as python -m gan2flow above (one more TensorFlow import, ~5-15 s)
def test_console_script_help_is_quiet():
    script = os.path.join(os.path.dirname(sys.executable), "gan2flow")
    if not os.path.exists(script):
        pytest.skip(f"no gan2flow console script beside {sys.executable}")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=600, env=_environment())
    assert result.returncode == 0, result.stderr
    assert "convert" in result.stdout
    assert not _TF_LOG_LINE.search(result.stderr), result.stderr


@pytest.mark.slow
def test_tensorflow_log_is_shown_on_request():
    # Whatever TensorFlow itself writes at import on this machine, GAN2FLOW_TF_LOG=1 lets through.
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           timeout=600, env=_environment())
    shown = subprocess.run([sys.executable, "-m", "gan2flow", "--help"], capture_output=True, text=True,
                           timeout=600, env=_environment(GAN2FLOW_TF_LOG="1"))
    assert shown.returncode == 0, shown.stderr
    assert bool(_TF_LOG_LINE.search(shown.stderr)) == bool(_TF_LOG_LINE.search(plain.stderr)), shown.stderr


@pytest.mark.parametrize("argv, orig_argv, expected", [
    (["/venv/bin/gan2flow", "--help"], ["/venv/bin/python", "/venv/bin/gan2flow", "--help"], True),
    (["C:\\venv\\Scripts\\gan2flow.exe"], ["python.exe"], True),
    (["-m"], ["python", "-m", "gan2flow", "--help"], True),
    (["-m"], ["python", "-X", "dev", "-mgan2flow.cli"], True),
    (["-m"], ["python", "-m", "pytest", "-q"], False),
    (["-m"], ["python", "-m", "gan2flowx"], False),
    (["/venv/bin/pytest", "-q"], ["/venv/bin/python", "/venv/bin/pytest", "-q"], False),
    (["-c"], ["python", "-c", "import gan2flow"], False),
    ([], [], False),
])
def test_started_as_command(argv, orig_argv, expected):
    assert _startup.started_as_command(argv, orig_argv) is expected


def test_show_tensorflow_log_reads_the_variable(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(_startup.SHOW_LOG_VARIABLE, value)
        assert _startup.show_tensorflow_log() is expected
    monkeypatch.delenv(_startup.SHOW_LOG_VARIABLE)
    assert _startup.show_tensorflow_log() is False


# --------------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line naming the argument, no traceback


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small input files: good and bad arrays, a corrupt .keras file, an untrained 2-D generator."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {name.replace(".", "_"): str(root / name) for name in
             ("points.npy", "flat.npy", "matrices.npy", "text.npy", "corrupt.keras", "generator.keras")}
    np.save(paths["points_npy"], np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    np.save(paths["flat_npy"], np.zeros(64, np.float32))                  # no sample axis
    np.save(paths["matrices_npy"], np.zeros((64, 3, 3), np.float32))      # neither vectors nor images
    with open(paths["text_npy"], "w") as handle:
        handle.write("1, 2, 3\n")
    with open(paths["corrupt_keras"], "wb") as handle:
        handle.write(b"PK\x03\x04 this is not a keras archive")
    models.mlp_generator(4, (3,), hidden=(8,)).save(paths["generator_keras"])  # outputs 3-D samples
    paths["missing_npy"], paths["missing_keras"] = str(root / "missing.npy"), str(root / "missing.keras")
    paths["out"] = str(root / "out")
    return paths


BAD_INPUTS = [
    # (argv with {placeholders} for the fixture's paths, the flag the message must name)
    ("train --data {missing_npy}", "--data"),
    ("train --data {flat_npy}", "--data"),
    ("train --data {matrices_npy}", "--data"),
    ("train --data {text_npy}", "--data"),
    ("train --toy grid25 --epochs 0", "--epochs"),
    ("train --toy grid25 --n-samples -5", "--n-samples"),
    ("train --toy grid25 --sigma-min 2 --sigma-max 1", "--sigma-min"),
    ("train --toy grid25 --loss hinge --objective logit --out {out}", "--objective"),
    ("convert --generator {missing_keras} --data {points_npy}", "--generator"),
    ("convert --generator {corrupt_keras} --data {points_npy}", "--generator"),
    ("convert --generator {generator_keras} --discriminator {corrupt_keras} --data {points_npy}", "--discriminator"),
    ("convert --generator {generator_keras} --data {points_npy}", "--data"),   # 2-D data, 3-D generator
    ("convert --generator {generator_keras} --data {missing_npy}", "--data"),
    ("convert --generator {generator_keras} --data {points_npy} --steps 0", "--steps"),
    ("convert --generator {generator_keras} --data {points_npy} --output {out}/flow.h5", "--output"),
    ("refine --flow {missing_keras} --n 8 --out {out}/x.npy", "--flow"),
    ("refine --flow {corrupt_keras} --n 8 --out {out}/x.npy", "--flow"),
    ("refine --flow {generator_keras} --n 8 --out {out}/x.npy", "--flow"),      # a model, not a flow
    ("refine --flow {corrupt_keras} --n 0 --out {out}/x.npy", "--n"),
    ("refine --flow {corrupt_keras} --n -3 --out {out}/x.npy", "--n"),
    ("refine --flow {corrupt_keras} --n 8 --out {out}/x.txt", "--out"),
    ("refine --flow {corrupt_keras} --n 8 --levels 0 --out {out}/x.npy", "--levels"),
    ("refine --flow {corrupt_keras} --n 8 --step-scale 0 --out {out}/x.npy", "--step-scale"),
    ("compare --refiners --methods drs,nope --out {out}", "--methods"),
    ("compare --refiners --members nope --out {out}", "--members"),
    ("compare --refiners --seeds 0,x --out {out}", "--seeds"),
    ("compare --refiners --n 0 --out {out}", "--n"),
    ("compare --refiners --losses logistic --out {out}", "--losses"),
    ("compare --seeds 0,x --out {out}", "--seeds"),
    ("compare --seeds 1,1 --out {out}", "--seeds"),
    ("compare --n 5 --out {out}", "--n"),
    ("compare --parametrisation edm --out {out}", "--parametrisation"),
    ("compare --refiners --parametrisation plain --out {out}", "--parametrisation"),
    ("compare --discriminator-training fast --out {out}", "--discriminator-training"),
    ("compare --refiners --discriminator-training sd --out {out}", "--discriminator-training"),
]


@pytest.mark.parametrize("argv, flag", BAD_INPUTS, ids=[argv for argv, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_naming_the_argument(argv, flag, files, capsys):
    status = cli.main([word.format(**files) if "{" in word else word for word in argv.split()])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("gan2flow: error: "), err
    assert f"`{flag}`" in lines[0], lines[0]
    assert "Traceback" not in err
    assert not os.path.exists(files["out"] + "/x.npy")


# --------------------------------------------------------------------------------------------------
# End to end: train --toy grid25 → convert → refine, tiny budgets


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    train_dir, flow_dir = str(root / "train"), str(root / "flow")
    assert cli.main(["train", "--toy", "grid25", "--n-samples", "256", "--epochs", "2", "--batch-size", "128",
                     "--d-learning-rate", "2e-3", "--out", train_dir]) == 0
    assert cli.main(["convert", "--generator", f"{train_dir}/generator.keras",
                     "--discriminator", f"{train_dir}/discriminator.keras", "--data", f"{train_dir}/data.npy",
                     "--loss", "logistic", "--steps", "10", "--batch-size", "64", "--no-stages",
                     "--out", flow_dir]) == 0
    return {"root": str(root), "train": train_dir, "flow": f"{flow_dir}/flow.keras", "flow_dir": flow_dir}


def test_train_writes_models_history_and_data(pipeline):
    train_dir = pipeline["train"]
    with open(f"{train_dir}/history.json") as handle:
        history = json.load(handle)
    assert history["epochs"] == 2 and len(history["history"]["d_loss"]) == 2
    assert np.all(np.isfinite(history["history"]["d_loss"] + history["history"]["g_loss"]))
    assert history["settings"]["objective"] == "logit" and history["settings"]["sample_shape"] == [2]
    assert history["settings"]["d_learning_rate"] == 2e-3 and history["settings"]["learning_rate"] == 1e-3
    assert np.load(f"{train_dir}/data.npy").shape == (256, 2)
    assert not os.path.exists(f"{train_dir}/backup")  # removed once training has finished
    assert not [name for name in os.listdir(train_dir) if name.startswith(".tmp-")]  # no temporary files left


def test_convert_writes_a_loadable_flow_and_its_diagnostics(pipeline):
    flow = gan2flow.load(pipeline["flow"])
    assert isinstance(flow, gan2flow.GANFlow) and flow.sample_shape == (2,)
    with open(f"{pipeline['flow_dir']}/diagnostics.json") as handle:
        diagnostics = json.load(handle)
    assert diagnostics["steps"] == 10 and diagnostics["levels"] and "good_enough" in diagnostics
    assert diagnostics == json.loads(json.dumps(flow.diagnostics))  # the saved flow carries the same report


def test_refine_writes_finite_samples_reproducibly(pipeline):
    paths = [f"{pipeline['root']}/refined/{name}.npy" for name in ("first", "again")]
    for path in paths:  # two runs, each loading the flow afresh
        assert cli.main(["refine", "--flow", pipeline["flow"], "--n", "64", "--levels", "4", "--seed", "3",
                         "--out", path]) == 0
    first, again = (np.load(path) for path in paths)
    assert first.shape == (64, 2) and first.dtype == np.float32 and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, again)  # same seed, same samples, bit for bit
    raw = gan2flow.load(pipeline["flow"]).sample(64, refine=False, seed=3).numpy()
    assert not np.array_equal(first, raw)  # refinement moved them


def test_refine_without_refinement_gives_the_generator_samples(pipeline):
    path = f"{pipeline['root']}/raw.npy"
    assert cli.main(["refine", "--flow", pipeline["flow"], "--n", "16", "--no-refine", "--seed", "5",
                     "--out", path]) == 0
    flow = gan2flow.load(pipeline["flow"])
    np.testing.assert_array_equal(np.load(path), flow.sample(16, refine=False, seed=5).numpy())


@pytest.mark.slow
def test_refine_in_latent_space(pipeline):
    # The pipeline's generator has had 4 updates: it barely stretches its latents (data units per latent
    # unit ≪ σ_max), and refine_latent scales its step by 1/stretch², so the default step_scale makes the
    # prior term −z unstable (η ≈ 10³ at σ_max: reported as a conversion.py bug). A small --step-scale
    # keeps η < 2 here; a trained generator needs none.
    path = f"{pipeline['root']}/latent.npy"
    assert cli.main(["refine", "--flow", pipeline["flow"], "--n", "32", "--space", "latent", "--levels", "4",
                     "--step-scale", "0.0002", "--out", path]) == 0
    samples = np.load(path)
    assert samples.shape == (32, 2) and np.all(np.isfinite(samples))


@pytest.mark.slow
def test_convert_to_a_named_file(pipeline):
    output = f"{pipeline['root']}/named/my_flow.keras"
    assert cli.main(["convert", "--generator", f"{pipeline['train']}/generator.keras", "--data",
                     f"{pipeline['train']}/data.npy", "--steps", "5", "--output", output]) == 0
    assert isinstance(gan2flow.load(output), gan2flow.GANFlow)
    assert os.path.exists(f"{pipeline['root']}/named/my_flow.diagnostics.json")


@pytest.mark.slow
def test_train_on_images_uses_conv_models(tmp_path):
    images = np.tanh(np.random.default_rng(0).normal(size=(64, 8, 8, 1))).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    assert cli.main(["train", "--data", str(tmp_path / "images.npy"), "--epochs", "1", "--batch-size", "32",
                     "--objective", "flow_regression", "--out", str(tmp_path / "run")]) == 0
    generator = gan2flow.adapters.load_model(str(tmp_path / "run/generator.keras"), "generator")
    assert generator.output_shape == (None, 8, 8, 1) and generator.input_shape == (None, 16)
    with open(tmp_path / "run/history.json") as handle:
        assert json.load(handle)["settings"]["model"] == "conv"


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_result(tmp_path):
    # kill -9 once the backup after epoch 2 of 4 exists, rerun the same command: the final models must
    # equal those of an uninterrupted run bit for bit (weights, optimizer states, noise generator and the
    # per-epoch shuffle are all restored).
    argv = [sys.executable, "-m", "gan2flow", "train", "--toy", "grid25", "--n-samples", "1024", "--epochs", "4",
            "--batch-size", "128"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(argv + ["--out", str(tmp_path / "whole")], check=True, capture_output=True, env=env, timeout=600)
    metadata = tmp_path / "killed/backup/training_metadata.json"
    process = subprocess.Popen(argv + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(metadata.read_text())["epoch"] >= 2:
                process.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run(argv + ["--out", str(tmp_path / "killed")], check=True, capture_output=True,
                             text=True, env=env, timeout=600)
    assert "resuming the interrupted run" in resumed.stdout
    for name in ("generator", "discriminator"):
        whole = gan2flow.adapters.load_model(str(tmp_path / f"whole/{name}.keras"), name)
        killed = gan2flow.adapters.load_model(str(tmp_path / f"killed/{name}.keras"), name)
        for a, b in zip(whole.get_weights(), killed.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    whole_history = json.loads((tmp_path / "whole/history.json").read_text())["history"]
    killed_history = json.loads((tmp_path / "killed/history.json").read_text())["history"]
    assert whole_history == killed_history


# --------------------------------------------------------------------------------------------------
# Command line: one line on stderr, status 2, no traceback, for bad files and values (the flag checks above)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = {name.replace(".", "_"): str(root / name) for name in
             ("points.npy", "nan.npy", "empty.npy", "generator.keras", "discriminator3.keras", "folder.keras",
              "points.keras")}
    rng = np.random.default_rng(0)
    np.save(paths["points_npy"], rng.normal(size=(64, 2)).astype(np.float32))
    np.save(paths["nan_npy"], np.full((64, 2), np.nan, np.float32))
    np.save(paths["empty_npy"], np.zeros((0, 2), np.float32))
    models.mlp_generator(4, (2,), hidden=(8,)).save(paths["generator_keras"])
    models.mlp_discriminator((3,), hidden=(8,), sigma_conditioned=False).save(paths["discriminator3_keras"])
    os.makedirs(paths["folder_keras"])
    with open(paths["points_keras"], "wb") as handle:          # an .npy array under a .keras name
        np.save(handle, np.zeros((4, 2), np.float32))
    paths["out"] = str(root / "out")
    paths["stale"] = str(root / "stale")
    os.makedirs(os.path.join(paths["stale"], "backup"))
    with open(os.path.join(paths["stale"], "backup", "settings.json"), "w") as handle:
        json.dump({"steps": 1}, handle)
    with open(os.path.join(paths["stale"], "backup", "latest.weights.h5"), "wb") as handle:
        handle.write(b"\x89HDF")
    return paths


BAD_COMMAND_LINES = [
    # (argv with {placeholders} for cli_files, the flag the one-line message must name)
    ("train --data {nan_npy} --out {out}", "--data"),
    ("train --data {empty_npy} --out {out}", "--data"),
    ("train --toy grid25 --batch-size 0 --out {out}", "--batch-size"),
    ("train --toy grid25 --learning-rate -1 --out {out}", "--learning-rate"),
    ("train --toy grid25 --d-learning-rate 0 --out {out}", "--d-learning-rate"),
    ("train --toy grid25 --seed -1 --out {out}", "--seed"),
    ("convert --generator {generator_keras} --data {nan_npy} --out {out}", "--data"),
    ("convert --generator {generator_keras} --data {empty_npy} --out {out}", "--data"),
    ("convert --generator {points_npy} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {points_keras} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {folder_keras} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {generator_keras} --discriminator {discriminator3_keras} --data {points_npy} --out {out}",
     "--discriminator"),
    ("convert --generator {generator_keras} --data {points_npy} --sigma-min 0 --out {out}", "--sigma-min"),
    ("convert --generator {generator_keras} --data {points_npy} --learning-rate 0 --out {out}", "--learning-rate"),
    ("convert --generator {generator_keras} --data {points_npy} --steps 1 --out {stale}", "--out"),
    ("refine --flow {folder_keras} --n 4 --out {out}/x.npy", "--flow"),
    ("refine --flow {points_keras} --n 4 --out {out}/x.npy", "--flow"),
    ("refine --flow {generator_keras} --n 4 --seed -2 --out {out}/x.npy", "--seed"),
]


@pytest.mark.parametrize("argv, flag", BAD_COMMAND_LINES, ids=[argv for argv, _ in BAD_COMMAND_LINES])
def test_command_line_errors_are_one_line_naming_the_flag(cli_files, argv, flag, capsys):
    status = cli.main([word.format(**cli_files) for word in argv.split()])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("gan2flow: error: "), err
    assert f"`{flag}`" in lines[0], lines[0]
    assert "Traceback" not in err
    assert not os.path.exists(cli_files["out"]), "a rejected command must not write outputs"


def test_traceback_flag_shows_the_original_error(cli_files):
    with pytest.raises(ValueError, match="NaN"):
        cli.main(["--traceback", "convert", "--generator", cli_files["generator_keras"],
                  "--data", cli_files["nan_npy"]])


def test_unexpected_errors_are_one_line_with_status_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("disk controller on fire\nsecond line")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), broken))
    status = cli.main(["demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert err[0] == ("gan2flow: error: RuntimeError: disk controller on fire (rerun with --traceback for "
                      "details)")


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        for subparser in action.choices.values():
            subparser.set_defaults(handler=handler)
    return parser


def test_errors_raised_while_tracing_show_their_own_line():
    # TensorFlow prefixes errors raised inside traced code with "in user code:" and the stack.
    traced = ValueError("in user code:\n\n    File \"a.py\", line 3, in f\n\n    ValueError: `x` is bad\n")
    assert cli._one_line(traced) == "ValueError: `x` is bad"
    assert cli._one_line(ValueError("first\nsecond")) == "first"
    assert cli._one_line(ValueError("")) == "ValueError"


def test_refine_names_the_flag_that_does_not_apply_to_a_staged_flow(tmp_path, capsys):
    """A staged flow takes no schedule (its stages fix the σ's): --levels is refused with a one-line error
    naming the flag and the field it belongs to; without it the staged refinement runs."""
    from test_ganflow import _staged_flow

    path = str(tmp_path / "staged.keras")
    _staged_flow().save(path)
    assert cli.main(["refine", "--flow", path, "--n", "8", "--levels", "4", "--out", str(tmp_path / "x.npy")]) == 2
    assert "`--levels` applies to field='calibrated'" in capsys.readouterr().err
    assert cli.main(["refine", "--flow", path, "--n", "8", "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (8, 2)

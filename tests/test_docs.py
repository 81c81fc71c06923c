"""Every command in README.md and cluster/README.md runs as written, or is marked as needing what a test machine
lacks and is checked instead (see tests/docblocks.py for the marks).

- The local blocks run in a fresh copy of the repository on the tiny preset: the README's quick start (the tiny
  pipeline, once: tests/test_pipeline_e2e.py checks the run it leaves), then cluster/README.md's own local
  blocks, whose ``ray start`` / ``ray job submit`` run reuses that finished run (its jobs skip the stages that
  are done) so the suite pays for one tiny pipeline, not two.
- Every other shell block is checked: bash syntax, ``make`` targets, the repository files it names, and every
  ``mak-ray`` or ``python -m jobs.<stage>`` command parses and its config file plus overrides validate.
- YAML config blocks validate as configs.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from mak_ray.cli import build_parser
from mak_ray.config import config_from_dict, load_config, merge_overrides
from tests.docblocks import DOCS, KINDS, REPO, SHELL, Block, assignments, blocks, commands, expand

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ALL = [b for doc in DOCS for b in blocks(doc)]
MARKED = [b for b in ALL if b.lang in (*SHELL, "yaml")]
REPO_PATH = re.compile(r"^(?:\./)?(?:cluster|configs|jobs|tests|bench|docs|mak_ray)/[\w./-]*$")
IMAGE_ROOT = re.search(r"^WORKDIR\s+(\S+)", (REPO / "cluster" / "Dockerfile").read_text(), re.M).group(1)


def _named_configs() -> dict[str, str]:
    """Config files that the docs write out as YAML blocks (first line ``# NAME.yaml``), by name."""
    out = {}
    for b in ALL:
        first = b.text.splitlines()[0] if b.text else ""
        m = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)", first.strip())
        if b.lang == "yaml" and m:
            out[m.group(1)] = b.text
    return out


def test_every_shell_and_yaml_block_is_marked():
    unmarked = [b.where for b in MARKED if b.kind not in KINDS]
    assert not unmarked, f"blocks without a <!-- doc-test: {'|'.join(KINDS)} --> mark: {unmarked}"
    for doc in DOCS:
        assert any(b.kind == "local" and b.doc == doc for b in MARKED), f"{doc} has no local block"


def test_readme_local_blocks_run(readme_run):
    assert readme_run.returncode == 0, readme_run.explain()
    log = readme_run.log.read_text()
    assert log.count(">>> doc block README.md") == sum(
        1 for b in MARKED if b.doc == "README.md" and b.kind == "local"
    )
    # the dry runs printed a plan; status found every stage done; the budget's dry run keeps scoring
    assert re.search(r"^score\s+run$", log, re.M), log[-5000:]
    assert re.search(r"^report\s+done$", log, re.M)
    assert re.search(r"^score\s+skip \(done\)$", log, re.M)
    assert re.search(r"^  select/mak\s+run \(stale\): select\.budget: 20 -> 30$", log, re.M)


def test_cluster_readme_local_blocks_run(docs_clone, readme_run):
    outcome = docs_clone.run("cluster/README.md")
    assert outcome.returncode == 0, outcome.explain()
    log = outcome.log.read_text()
    assert log.count("succeeded") >= 2, log[-5000:]  # both jobs
    assert "outputs complete and current" in log  # they found the README's run done


def _check_command(cmd: list[str], where: str) -> None:
    if not cmd:
        return
    if cmd[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
        for t in cmd[1:]:
            if "=" not in t and not t.startswith("-"):
                assert t in targets, f"{where}: make target {t!r} is not in the Makefile"
    for arg in cmd:
        rel = arg.removeprefix(IMAGE_ROOT + "/")
        if REPO_PATH.match(rel):
            assert (REPO / rel).exists(), f"{where}: {arg} is not in the repository"
    argv = None
    if "mak-ray" in cmd:
        argv = cmd[cmd.index("mak-ray") + 1 :]
    elif "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1].startswith("jobs."):
        at = cmd.index("-m") + 1
        stage = cmd[at].removeprefix("jobs.")
        assert (REPO / "jobs" / f"{stage}.py").is_file(), f"{where}: no module {cmd[at]}"
        argv = [stage.replace("_", "-"), *cmd[at + 1 :]]
    if argv is None:
        return
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{where}: mak-ray {' '.join(argv)} does not parse") from e
    path = getattr(args, "config", None)
    overrides = getattr(args, "overrides", []) or []
    named = _named_configs()
    if path in named:
        cfg_data = merge_overrides(yaml.safe_load(named[path]), list(overrides))
        config_from_dict(cfg_data)
    elif path is not None:
        rel = path.removeprefix(IMAGE_ROOT + "/")
        assert (REPO / rel).is_file(), f"{where}: config {path} is not in the repository"
        load_config(REPO / rel, overrides)  # unknown keys or bad values raise ConfigError
    elif overrides:
        load_config(None, overrides)


@pytest.mark.parametrize("block", [b for b in MARKED if b.lang in SHELL], ids=lambda b: f"{b.where}-{b.kind}")
def test_shell_block_is_valid(block: Block):
    """Syntax, make targets, repository files and configs of every shell block (the local ones also run)."""
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
    env = {"PWD": str(REPO), **assignments(block.text)}
    for cmd in commands(block.text):
        _check_command([expand(a, env) for a in cmd], block.where)


@pytest.mark.parametrize("block", [b for b in MARKED if b.lang == "yaml"], ids=lambda b: b.where)
def test_yaml_block_is_a_valid_config(block: Block):
    assert block.kind == "config", f"{block.where}: a YAML block in the docs is a config template"
    config_from_dict(yaml.safe_load(block.text))


def test_checks_catch_a_broken_command():
    """The static checks fail on what a broken doc command would contain."""
    bad = [
        ["mak-ray", "pipeline", "-c", "configs/tiny.yaml", "select.budgt=3"],
        ["python", "-m", "jobs.nope", "--config", "configs/tiny.yaml"],
        ["kubectl", "apply", "-f", "cluster/kuberay/missing.yaml"],
        ["make", "no-such-target"],
        ["mak-ray", "pipeline", "--no-such-flag"],
    ]
    for cmd in bad:
        with pytest.raises((AssertionError, ValueError)):
            _check_command(cmd, "test")
    _check_command(["mak-ray", "pipeline", "-c", "configs/tiny.yaml", "select.budget=3", "--dry-run"], "test")


def test_doc_paths_are_the_presets():
    """The demo writes where the presets look, so the documented commands meet."""
    for preset, cfg_file in (
        ("tiny", "tiny.yaml"),
        ("small", "demo-small.yaml"),
        ("nearood", "demo-nearood.yaml"),
    ):
        cfg = yaml.safe_load((REPO / "configs" / cfg_file).read_text())
        for name in ("target", "pool", "eval_train", "eval_test"):
            assert cfg["data"][name] == f"demo-data/{preset}/{name}", (cfg_file, name)


@pytest.mark.parametrize(
    ("preset", "config", "make_args"), [("small", "demo-small.yaml", True), ("tiny", "tiny.yaml", False)]
)
def test_the_demo_runs_its_preset_config_as_written(monkeypatch, preset, config, make_args):
    """``make demo`` (and ``mak-ray demo --preset tiny``) run exactly the preset file's config, so that
    ``mak-ray pipeline -c configs/<preset>.yaml`` afterwards finds the same fingerprints and skips every stage."""
    import mak_ray.demo.make as make
    import mak_ray.pipeline as pipeline
    from mak_ray.config import config_to_dict
    from mak_ray.demo.run import run_demo

    seen = []
    paths = {n: f"demo-data/{preset}/{n}" for n in ("target", "pool", "eval_train", "eval_test")}
    monkeypatch.setattr(make, "make_demo_data", lambda *a, **k: {"paths": paths, "suggested_budget": 1})
    monkeypatch.setattr(pipeline, "run_pipeline", seen.append)
    monkeypatch.chdir(REPO)
    if make_args:  # the Makefile's call
        mk = (REPO / "Makefile").read_text()
        assert "--data-out $(DEMO_DATA) --output $(DEMO_OUT)" in mk and "DEMO_PRESET ?= small" in mk
        run_demo(preset=preset, data_out=f"demo-data/{preset}", output=f"runs/demo-{preset}")
    else:
        run_demo(preset=preset)
    assert config_to_dict(seen[0]) == config_to_dict(load_config(REPO / "configs" / config))

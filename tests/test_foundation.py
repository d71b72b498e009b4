"""The installed stack, the CLI, ID sanitising and atomic writes."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmfusion.cli import main
from mmfusion.ids import sanitize_id
from mmfusion.io import atomic_dir, atomic_path


def test_pinned_stack_imports() -> None:
    """The route pyproject.toml chose for this Python: the DGL stack on 3.11/3.12 (torch
    2.10.0 + dgl 2.1.0 through mmfusion.dgl_compat's GraphBolt stand-in, and DGL really works
    on that torch), no DGL and a newer torch on 3.13 (the torch graph backend)."""
    import radiomics  # noqa: F401  (pyradiomics-bhklab)
    import torch

    if sys.version_info >= (3, 13):
        with pytest.raises(ImportError):
            import dgl  # noqa: F401
        assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
        return
    import dgl

    assert torch.__version__.startswith("2.10.0")
    assert dgl.__version__ == "2.1.0"
    # dgl really works on this torch: a GAT layer on a batched graph, forward + backward
    g = dgl.batch([dgl.graph(([0, 1, 2], [1, 2, 0]))] * 2)
    g = dgl.add_self_loop(g)
    layer = dgl.nn.GATConv(4, 3, num_heads=2)
    out = layer(g, torch.randn(6, 4, requires_grad=True))
    out.sum().backward()
    assert out.shape == (6, 2, 3)


STAGES = {"synth", "index", "convert", "crop", "radiomics", "cohort", "train", "report"}


def test_cli_dispatches_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    """Every DESIGN §4 stage is a subcommand, and each subcommand has its own parser
    (its `--help` names it in the usage line and exits 0)."""
    from mmfusion.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert STAGES <= set(sub.choices)
    with pytest.raises(SystemExit, match="^0$"):
        main(["--help"])
    listed = capsys.readouterr().out
    for name in sub.choices:
        assert name in listed
        with pytest.raises(SystemExit, match="^0$"):
            main([name, "--help"])
        assert f"usage: mmfusion {name}" in capsys.readouterr().out
    assert main([]) == 2  # no command: help, exit code 2
    assert "usage: mmfusion" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^2$"):
        main(["no-such-stage"])
    assert "invalid choice: 'no-such-stage'" in capsys.readouterr().err


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mmfusion", "synth", "--out", str(tmp_path),
         "--matrix", "32", "--pixel-spacing", "1"],
        capture_output=True, text=True)
    assert res.returncode == 1
    assert "field of view" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("raw", ["../x", "..", "a/b", "/etc/passwd", "ESO 1", "é"])
def test_sanitized_ids_stay_inside_a_folder(raw: str, tmp_path: Path) -> None:
    safe = sanitize_id(raw)
    target = (tmp_path / safe).resolve()
    assert target.parent == tmp_path.resolve()
    assert "/" not in safe and not safe.startswith(".")


def test_sanitized_ids_are_stable_and_distinct() -> None:
    assert sanitize_id("ESO-0001") == "ESO-0001"
    assert sanitize_id(" ESO-0001  ") == "ESO-0001"  # DICOM space padding ignored
    assert sanitize_id("a/b") != sanitize_id("a_b")
    # stable across runs and machines: the documented form, SHA-256 of the full ID
    digest = hashlib.sha256(b"a/b").hexdigest()[:16]
    assert sanitize_id("a/b") == f"a_b-h{digest}"
    long = "P" * 100
    assert sanitize_id(long) == "P" * 46 + "-h" + hashlib.sha256(long.encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match="empty patient ID"):
        sanitize_id("  ")


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_text("whole")
    assert final.read_text() == "whole"
    assert list(tmp_path.iterdir()) == [final]
    # not the 0600 of a temporary file: results are shared with colleagues
    mask = os.umask(0)
    os.umask(mask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path: Path) -> None:
    final = tmp_path / "cache"
    with atomic_dir(final) as tmp:
        (tmp / "a.npy").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(final) as tmp:
        (tmp / "b.npy").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temporary left behind
    assert [p.name for p in final.iterdir()] == ["a.npy"]  # the old folder, untouched
    with atomic_dir(final) as tmp:
        (tmp / "c.npy").write_text("new")
    assert [p.name for p in final.iterdir()] == ["c.npy"]  # replaced as a whole


def test_config_sections_refuse_unknown_keys_and_bad_json() -> None:
    from mmfusion.errors import ConfigError
    from mmfusion.features.patches import CropSettings
    from mmfusion.settings import parse_settings_json
    from mmfusion.train.loop import TrainConfig

    with pytest.raises(ConfigError, match="unknown crop setting.*'tumor_size'"):
        CropSettings.from_config({"tumor_size": [4, 8, 8]})
    with pytest.raises(ConfigError, match="train.augment.*'flipp'"):
        TrainConfig.from_config({"augment": {"flipp": 0.5}})
    assert TrainConfig.from_config({"augment": {"flip": 0.1}}).augment.flip == 0.1
    assert parse_settings_json("{}", "--settings") == {}
    with pytest.raises(ConfigError, match="--settings is not JSON"):
        parse_settings_json("{spacing: 2}", "--settings")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_settings_json("[1, 2]", "--settings")

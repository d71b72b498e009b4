"""The GraphBolt stand-in (`mmfusion.dgl_compat`): registered only when the installed DGL has
no GraphBolt library for the installed torch, and then `import dgl` works.

A fake `dgl` package (whose `__init__` imports `dgl.graphbolt`, which fails the way DGL 2.1.0
fails without its library) stands in for DGL, so this runs whatever torch is installed."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mmfusion.dgl_compat import graphbolt_library, install_graphbolt_stand_in


def _fake_dgl(root: Path, with_library: bool) -> Path:
    pkg = root / "dgl"
    (pkg / "graphbolt").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import graphbolt\nfrom .graphbolt import *  # noqa\n"
                                     "VALUE = 42\n")
    (pkg / "graphbolt" / "__init__.py").write_text(
        "raise FileNotFoundError('Cannot find DGL C++ graphbolt library')\n")
    if with_library:
        Path(graphbolt_library(str(pkg), version("torch").split("+")[0])).write_bytes(b"")
    return pkg


@pytest.fixture()
def fake_dgl_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [m for m in sys.modules if m == "dgl" or m.startswith("dgl.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in [m for m in sys.modules if m == "dgl" or m.startswith("dgl.")]:
        del sys.modules[name]  # monkeypatch then restores the real DGL's modules


def test_without_its_library_dgl_imports_through_the_stand_in(fake_dgl_path: Path) -> None:
    _fake_dgl(fake_dgl_path, with_library=False)
    assert install_graphbolt_stand_in() is True
    import dgl

    assert dgl.VALUE == 42
    with pytest.raises(AttributeError, match="no GraphBolt library for torch"):
        dgl.graphbolt.ItemSampler  # noqa: B018
    assert install_graphbolt_stand_in() is False  # once only


def test_with_its_library_nothing_is_replaced(fake_dgl_path: Path) -> None:
    _fake_dgl(fake_dgl_path, with_library=True)
    assert install_graphbolt_stand_in() is False
    with pytest.raises(FileNotFoundError, match="graphbolt library"):
        import dgl  # noqa: F401 - the fake's real graphbolt runs (and fails, as the fake does)

"""Nothing in the shipped code executes data: an AST scan of ls_seq/, ls_seq_fairseq/, vision/, recipes/ and benchmarks/.

Checkpoints go through safetensors or ``torch.load(weights_only=True)``; no ``trust_remote_code=True``;
no ``eval``/``exec``/``pickle.load``; no shell interpolation (``shell=True``, ``os.system``, ``os.popen``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("ls_seq", "ls_seq_fairseq", "vision", "recipes", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        builtin = isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}  # not model.eval()
        if builtin or name in {"os.system", "os.popen", "pickle.load", "pickle.loads"}:
            found.append(f"{where}: {name}()")
        if name.endswith("torch.load") and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if _is_true(_keyword(node, "shell")):
            found.append(f"{where}: shell=True")
        if _is_true(_keyword(node, "trust_remote_code")):
            found.append(f"{where}: trust_remote_code=True")
    return found


def test_sources_were_found():
    assert {"metric.py", "criterion.py", "train.py", "wmt_en_de.py"} <= {p.name for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_execution_from_data(path):
    assert _problems(path) == []


def test_scanner_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, subprocess\n"
        "torch.load('x.pt')\n"
        "subprocess.run('ls ' + p, shell=True)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=True)\n"
        "eval(s)\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_problems(bad)) == 4
    finally:
        ROOT = saved

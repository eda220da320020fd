"""The compiled CPU kernels of the calibration pass against float64 torch and ``torch.topk``, and the pass they
serve against its ATen path. The reference for ``exp_sums`` is ``sum exp((z - m) / T)`` in float64; for the top k,
``torch.topk`` (values) and ``torch.max`` (the arg-max, first of ties)."""

import math
import warnings

import pytest
import torch

from ls_seq.errors import LsSeqWarning
from ls_seq.functional import native, statistics
from ls_seq.functional.statistics import token_statistics

pytestmark = pytest.mark.skipif(not native.exp_sums_available(), reason="no C compiler: the ATen path is tested elsewhere")

GRID = [0.5, 0.8, 1.0, 1.3, 2.0]


def _scales(grid):
    return torch.tensor([1 / (t * math.log(2)) for t in grid], dtype=torch.float64)


def _reference_sums(z, grid):
    d = z.double() - z.double().amax(1, keepdim=True)  # (c, V)
    e = torch.exp(d[None] / torch.tensor(grid, dtype=torch.float64)[:, None, None])  # (T, c, V)
    return e.sum(-1), e.square().sum(-1)  # (T, c) each


@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 255, 1024, 1025, 3001])
def test_exp_sums_equal_float64_sums_at_every_temperature(vocab):
    g = torch.Generator().manual_seed(vocab)
    z = 6 * torch.randn(37, vocab, generator=g)  # (c, V): terms from 1 down to ~e^-80 at T = 0.5
    out, sq = torch.full((5, 37), float("nan")), torch.full((5, 37), float("nan"))
    finite = torch.zeros(37, dtype=torch.bool)
    native.exp_sums(z, z.amax(1).contiguous(), _scales(GRID), out, sq, finite)
    ref, ref_sq = _reference_sums(z, GRID)
    assert finite.all()
    # float32 results: the exponent's rounding (|x| ulp) and a 64-term float sum per lane bound the error.
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(sq.double(), ref_sq, rtol=2e-6, atol=0)


def test_exp_sums_read_strided_rows_and_write_columns_of_a_larger_buffer():
    g = torch.Generator().manual_seed(1)
    big = 3 * torch.randn(20, 700, generator=g)
    z = big[3:13, 50:650]  # (10, 600): row stride 700
    m = z.amax(1).contiguous()
    out = torch.full((5, 30), -1.0)
    native.exp_sums(z, m, _scales(GRID), out[:, 7:17], None, torch.empty(10, dtype=torch.bool))
    ref, _ = _reference_sums(z, GRID)
    torch.testing.assert_close(out[:, 7:17].double(), ref, rtol=2e-6, atol=0)
    assert (out[:, :7] == -1).all() and (out[:, 17:] == -1).all()  # nothing written outside the columns


def test_exp_sums_underflowing_terms_add_nothing():
    z = torch.tensor([[0.0, -1000.0, -200.0, -130.0] + [-1e30] * 13])  # (1, 17): one term of 1, the rest ~0
    out, sq = torch.empty(5, 1), torch.empty(5, 1)
    native.exp_sums(z, z.amax(1).contiguous(), _scales(GRID), out, sq, torch.empty(1, dtype=torch.bool))
    ref, _ = _reference_sums(z, GRID)
    torch.testing.assert_close(out.double(), ref, rtol=1e-7, atol=0)
    assert (out == 1).sum() >= 3  # at T <= 1 every other term is below 2^-126 * 16: the sum rounds to 1


def test_exp_sums_split_across_threads_equals_one_call():
    g = torch.Generator().manual_seed(2)
    z = 4 * torch.randn(64, 20000, generator=g)  # 6.4M terms: above the split threshold
    m = z.amax(1).contiguous()
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            out, sq, finite = torch.empty(5, 64), torch.empty(5, 64), torch.empty(64, dtype=torch.bool)
            native.exp_sums(z, m, _scales(GRID), out, sq, finite)
            values, indices = native.native_topk(z, 4)
            results.append((out, sq, finite, values, indices))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)  # a row's result depends on the row only


@pytest.mark.parametrize(("rows", "vocab", "k"), [(50, 1, 1), (50, 7, 3), (40, 256, 5), (40, 257, 5), (9, 32000, 5)])
def test_native_topk_equals_torch(rows, vocab, k):
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(rows, vocab, generator=g)
    values, indices = native.native_topk(z, k)
    ref_values, _ = z.topk(k, dim=1)
    assert torch.equal(values, ref_values)
    assert torch.equal(z.gather(1, indices), values)
    assert torch.equal(indices[:, 0], z.max(dim=1).indices)


def test_native_topk_ties_and_ascending_rows():
    g = torch.Generator().manual_seed(3)
    z = torch.randint(0, 3, (300, 613), generator=g).float()  # many ties at the maximum
    values, indices = native.native_topk(z, 4)
    assert torch.equal(values, z.topk(4, dim=1).values)
    assert torch.equal(indices[:, 0], z.max(dim=1).indices)  # the first maximum, as torch.max returns it
    assert torch.equal(z.gather(1, indices), values)
    assert (indices[:, :-1] < indices[:, 1:]).all()  # tied values keep index order (all four tie here)
    up = torch.arange(5000.0).repeat(2, 1)  # every block raises the threshold: the insertion path throughout
    values, indices = native.native_topk(up, 5)
    assert values[0].tolist() == [4999.0, 4998.0, 4997.0, 4996.0, 4995.0]
    assert indices[1].tolist() == [4999, 4998, 4997, 4996, 4995]


@pytest.mark.parametrize("vocab", [300, 1030, 4096 + 7])
def test_exp_sums_flag_every_nonfinite_row(vocab):
    z = torch.randn(8, vocab)
    bad = {0: float("nan"), 1: float("inf"), 2: float("-inf"), 3: float("nan"), 4: float("-inf"), 5: float("inf")}
    where = {0: 3, 1: 7, 2: 9, 3: vocab - 1, 4: vocab - 2, 5: vocab // 2}  # in the first block, the middle, the tail
    for row, value in bad.items():
        z[row, where[row]] = value
    z[6] = float("nan")  # a row of NaN
    values, _ = native.native_topk(z, 2)  # the pass takes the maximum from here, NaN or not
    finite = torch.ones(8, dtype=torch.bool)
    native.exp_sums(z, values[:, 0].contiguous(), _scales(GRID), torch.empty(5, 8), torch.empty(5, 8), finite)
    assert finite.tolist() == [False] * 7 + [True]


def _statistics(logits, labels, **kwargs):
    return token_statistics(logits, labels, torch.tensor(GRID), brier=True, top_k=3, classes=torch.tensor([0, 5, 9]), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_token_statistics_compiled_equals_aten_path(monkeypatch, dtype):
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(4, 33, 517, generator=g)).to(dtype)[:, :-1]  # (4, 32, V): strided, a causal shift
    labels = torch.randint(0, 517, (4, 32), generator=g)
    labels[:, :5] = -100  # masked prompt tokens: gathered rows, not one run
    compiled = _statistics(logits, labels)
    monkeypatch.setattr(statistics, "exp_sums_available", lambda: False)
    aten = _statistics(logits, labels)
    for name in ("row", "column", "label", "correct", "in_topk"):
        assert torch.equal(getattr(compiled, name), getattr(aten, name)), name
    for name in ("confidence", "log_prob", "sum_sq", "topk_mass", "class_prob"):
        # Both are float32 evaluations of the same sums: ATen's exp2 and the kernel's differ by ulps.
        torch.testing.assert_close(getattr(compiled, name), getattr(aten, name), rtol=5e-6, atol=1e-7, msg=name)


def test_token_statistics_compiled_rejects_nonfinite_scored_rows_only():
    logits = torch.randn(2, 6, 40)
    labels = torch.randint(0, 40, (2, 6))
    logits[1, 2, 7] = float("-inf")
    labels[1, 2] = -100  # padding may hold anything
    token_statistics(logits, labels, torch.tensor([1.0]))
    labels[1, 2] = 3
    with pytest.raises(ValueError, match="finite"):
        token_statistics(logits, labels, torch.tensor([1.0]))


def test_a_failed_build_warns_once_and_the_pass_takes_the_aten_path(monkeypatch, tmp_path):
    monkeypatch.setenv("LS_SEQ_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")  # a compiler that always fails
    native._library.cache_clear()
    try:
        with pytest.warns(LsSeqWarning, match="unavailable"):
            assert not native.exp_sums_available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not native.exp_sums_available()  # cached: no second warning
            logits = torch.randn(3, 50)
            stats = token_statistics(logits, torch.tensor([1, 2, 3]), torch.tensor([1.0]))
        torch.testing.assert_close(stats.confidence[0], logits.softmax(-1).amax(-1), rtol=1e-6, atol=0)
        assert list(tmp_path.rglob("*.so")) == []  # no half-built library left in the cache
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert native.exp_sums_available()


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("LS_SEQ_NATIVE", "0")
    native._library.cache_clear()
    try:
        assert not native.exp_sums_available()
    finally:
        monkeypatch.delenv("LS_SEQ_NATIVE")
        native._library.cache_clear()
    assert native.exp_sums_available()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork: POSIX only")
def test_a_forked_child_splits_rows_across_a_new_pool():
    import multiprocessing

    z = 4 * torch.randn(64, 20000)  # above the split threshold: the thread pool is used, and so created here
    m = z.amax(1).contiguous()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = torch.empty(5, 64)
        native.exp_sums(z, m, _scales(GRID), out, None, torch.empty(64, dtype=torch.bool))
        with multiprocessing.get_context("fork").Pool(1) as pool:  # the child inherits the pool object, not its threads
            child = pool.apply_async(_sums_in_child, (z, m)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(child, out)


def _sums_in_child(z, m):
    torch.set_num_threads(2)
    out = torch.empty(5, z.shape[0])
    native.exp_sums(z, m, _scales(GRID), out, None, torch.empty(z.shape[0], dtype=torch.bool))
    return out


# ------------------------------------------------------------------------------------------------------
# #25: the compiled kernel is loaded only from a place no other user can write (ssh's StrictModes rule).
# The planted library holds the real kernels plus a constructor that writes a marker file when it is loaded:
# the marker is the independent evidence of whether the cache's file ran. The refusals fail before #25's
# change (the planted library was loaded from any cache); the "private" case passes before and after.

_PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("LS_SEQ_TEST_PLANTED");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("loaded", f); fclose(f); }
}
"""


@pytest.mark.parametrize("case", ["private", "group-writable cache", "world-writable parent", "cache of another user"])
def test_a_kernel_cache_another_user_can_write_is_never_loaded_from(monkeypatch, tmp_path, case):
    import os
    import re
    import subprocess
    import tempfile

    compiler = native._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    if case == "cache of another user" and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    root = tmp_path / "parent" / "cache"
    cache = root / "native"
    cache.mkdir(parents=True, mode=0o700)
    (tmp_path / "planted.c").write_text(_PLANTED)
    planted = cache / native._library_name(compiler, native._FLAG_SETS[0])
    subprocess.run(
        [
            compiler,
            *native._FLAG_SETS[0],
            "-shared",
            "-fPIC",
            "-o",
            str(planted),
            str(native._SOURCE),
            str(tmp_path / "planted.c"),
        ],
        check=True,
        capture_output=True,
    )
    planted.chmod(0o700)
    if case == "group-writable cache":
        cache.chmod(0o770)
    elif case == "world-writable parent":
        (tmp_path / "parent").chmod(0o777)
    elif case == "cache of another user":
        os.chown(cache, 65534, 65534)
    marker = tmp_path / "loaded.txt"
    fresh = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(native.tempfile, "mkdtemp", lambda **kw: fresh.append(mkdtemp(**kw)) or fresh[-1])
    monkeypatch.setenv("LS_SEQ_TEST_PLANTED", str(marker))
    monkeypatch.setenv("LS_SEQ_CACHE", str(root))
    native._library.cache_clear()
    try:
        if case == "private":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert native.exp_sums_available()
            assert marker.read_text() == "loaded"  # a private cache is used as it is
        else:
            reason = {
                "group-writable cache": rf"{re.escape(str(cache))}' is writable by its group \(mode 0770\)",
                "world-writable parent": rf"{re.escape(str(tmp_path / 'parent'))}' is writable by group and others",
                "cache of another user": rf"{re.escape(str(cache))}' belongs to uid 65534",
            }[case]
            with pytest.warns(
                LsSeqWarning, match=rf"not loaded from a place another user can write: the cache .* is refused: .*{reason}"
            ) as caught:
                assert native.exp_sums_available()  # built for this process in a private directory instead
            assert len([w for w in caught if issubclass(w.category, LsSeqWarning)]) == 1
            assert not marker.exists()  # the planted library never ran
            assert len(fresh) == 1 and not os.path.exists(fresh[0])  # the private build is gone once loaded
            values, indices = native.native_topk(torch.tensor([[0.5, 3.0, -1.0, 2.0]]), 2)  # the kernel works
            assert indices.tolist() == [[1, 3]] and values.tolist() == [[3.0, 2.0]]
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert native.exp_sums_available()


def test_unsafe_path_accepts_a_private_path_below_a_sticky_root_directory(tmp_path):

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert native.unsafe_path(private) is None
    private.chmod(0o702)
    assert "writable by others (mode 0702)" in native.unsafe_path(private)

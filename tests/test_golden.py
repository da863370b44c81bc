"""Golden tests of the generated source: it is a product surface, so it must not drift.

Regenerate after an intended change with ``EINPLAN_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``
and review the diff.
"""

import os
from pathlib import Path

import pytest
import torch

import einplan

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "quadratic_form": ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)], {}),
    "shared_matrix": ("b n, m n -> b m", [(100, 500), (1000, 500)], {"lowering": "matmul-broadcast"}),
    "batched_dot": ("b1 b2 n, b1 b2 n -> b1 b2", [(80, 20, 64), (80, 20, 64)], {"lowering": "elementwise-sum"}),
    "tiny_matmul_unrolled": ("b i j, b j k -> b i k", [(262144, 2, 2), (262144, 2, 2)], {"lowering": "unrolled"}),
    "tiny_matmul_compiled": ("b i j, b j k -> b i k", [(262144, 3, 3), (262144, 3, 3)], {"compiled": True}),
    "tiny_outer_in_slices": ("b i, b j -> b i j", [(262144, 3), (262144, 3)], {"lowering": "elementwise-sum"}),
    "written_out_permuted": ("b c i j, c b j -> c b i", [(32, 33, 2, 3), (33, 32, 3)], {"compiled": True, "lowering": "unrolled"}),
    "max_inner_product_index": ("m d, n d -> | argmax m n", [(2000, 128), (2000, 128)], {"memory_limit": 2**20}),
    "max_inner_product_screened": ("m d, n d -> | max m n", [(3000, 64), (2500, 64)], {}),
    "logsumexp_scores": ("q d, k d -> q | logsumexp k", [(2000, 64), (3000, 64)], {"memory_limit": 2**20}),
    "composite_split": ("b (h d), h d e -> b h e", [(5, 12), (3, 4, 7)], {"lowering": "matmul-broadcast"}),
    "batched_trace": ("b n n -> b", [(7, 3, 3)], {}),
    "named_ellipsis": ("*batch n, n m -> *batch m", [(2, 3, 4), (4, 5)], {"lowering": "matmul-broadcast"}),
    "repeat_view": ("n d -> b n d", [(16, 8)], {"b": 4}),
    "repeat_grouped_query": ("b kvh n d -> b (r kvh) n d", [(2, 4, 16, 8)], {"r": 2}),
    "group_mean": ("b *r -> b | mean r", [(8, 3, 4, 5)], {}),
    "merge_a_group": ("b ... c -> b (...) c", [(2, 3, 4, 5)], {}),
    "prod_after_matmul": ("a k, k c -> a | prod c", [(30, 8), (8, 40)], {}),
    "fused_max_cuda": ("m d, n d -> | max m n", [(20000, 128), (20000, 128)], {"device": "cuda", "lowering": "fused"}),
    "fused_attention_logsumexp_cuda": (
        "b h q d, b h k d -> b h q | logsumexp k",
        [(4, 8, 2048, 64), (4, 8, 2048, 64)],
        {"device": "cuda", "dtype": torch.bfloat16, "lowering": "fused"},
    ),
}


pytestmark = pytest.mark.usefixtures("shipped_cost_model")


@pytest.fixture(autouse=True)
def amx_cpu(shipped_cost_model, cpu_screen):
    """The shipped CPU model as on a CPU with AMX tiles, on any machine (it screens large max/min)."""
    cpu_screen(True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_source_matches_golden(name):
    pattern, shapes, options = CASES[name]
    source = einplan.code(pattern, *shapes, **options)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("EINPLAN_UPDATE_GOLDEN"):
        path.write_text(source)
    assert path.exists(), f"no golden file {path}; run with EINPLAN_UPDATE_GOLDEN=1"
    assert source == path.read_text()


def test_quadratic_form_golden_is_matmul_then_multiply_sum():
    source = (GOLDEN / "quadratic_form.txt").read_text()
    body = [line for line in source.splitlines() if "# " in line and "=" in line]
    assert "torch.matmul" in body[0] and "matmul-broadcast" in body[0]
    assert "elementwise-sum" in body[1] and ".sum(" in body[1]
    assert "expand" not in source and "repeat" not in source

"""The shared argument checks: one wording and one contract for every public entry point."""

import numpy as np
import pytest

from evolkv_hf import SearchArguments
from evolkv_hf._validation import POOLINGS, check_positive_int
from evolkv_hf.allocation import POOLING_CHOICES
from evolkv_hf.cache import ScoringOptions
from evolkv_hf.metrics.stats import bootstrap_ci
from evolkv_hf.tasks.niah import generate_niah


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(12)])
def test_accepts_integers_and_returns_int(value):
    result = check_positive_int("n", value)
    assert result == int(value)
    assert type(result) is int


@pytest.mark.parametrize("value", [1.0, 2.5, "3", True, None])
def test_non_integers_are_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^window_size must be an integer, got"):
        check_positive_int("window_size", value)


def test_below_minimum_is_a_value_error_naming_the_bound():
    with pytest.raises(ValueError, match=r"^group_size must be an integer >= 1, got 0\.$"):
        check_positive_int("group_size", 0)
    assert check_positive_int("hops", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=">= 2"):
        check_positive_int("population_size", 1, minimum=2)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ScoringOptions(window_size=0),
        lambda: SearchArguments(output_dir="unused", target_budget=64, window_size=0),
        lambda: bootstrap_ci([1.0, 2.0], n_resamples=0),
        lambda: generate_niah(None, context_length=0, num_samples=1),
    ],
    ids=["cache", "search", "bootstrap", "tasks"],
)
def test_every_entry_point_uses_the_shared_wording(build):
    with pytest.raises(ValueError, match=r"must be an integer >= 1, got 0\.$"):
        build()


def test_allocation_accepts_the_cache_poolings():
    assert POOLING_CHOICES == POOLINGS


def test_numpy_integers_are_stored_as_plain_ints():
    """Regression: accepted numpy integers must not reach the JSON checkpoint or allocation provenance."""
    import json

    args = SearchArguments(
        output_dir="unused",
        target_budget=64,
        group_size=np.int64(4),
        window_size=np.int32(8),
        kernel_size=np.int64(3),
    )
    assert type(args.group_size) is int and type(args.window_size) is int and type(args.kernel_size) is int
    json.dumps(args.to_dict())
    options = ScoringOptions(window_size=np.int64(16), kernel_size=np.int64(5), num_sink_tokens=np.int64(0))
    assert type(options.window_size) is int and type(options.kernel_size) is int
    assert type(options.num_sink_tokens) is int


@pytest.mark.parametrize(
    "keyword, value, error, message",
    [
        ("group_size", "8", TypeError, r"^group_size must be an integer, got str '8'\.$"),
        ("window_size", None, TypeError, r"^window_size must be an integer, got NoneType None\.$"),
        ("target_budget", "128", TypeError, r"^target_budget must be a number, got str '128'\.$"),
        ("target_budget", None, TypeError, r"^target_budget must be a number"),
        ("target_budget", True, TypeError, r"^target_budget must be a number, got bool"),
        (
            "target_budget",
            float("nan"),
            ValueError,
            r"^target_budget must be a finite number > 0, got nan\.$",
        ),
        (
            "target_budget",
            float("inf"),
            ValueError,
            r"^target_budget must be a finite number > 0, got inf\.$",
        ),
        ("sigma0", "0.3", TypeError, r"^sigma0 must be a number"),
        ("sigma0", 0, ValueError, r"^sigma0 must be a finite number > 0, got 0\.$"),
        ("cache_score_lambda", -0.1, ValueError, r"^cache_score_lambda must be a finite number >= 0"),
        ("engine_max_storage_gb", "8", TypeError, r"^engine_max_storage_gb must be a number"),
        ("seed", -1, ValueError, r"^seed must be an integer >= 0, got -1\.$"),
        ("seed", 1.5, TypeError, r"^seed must be an integer"),
        ("population_size", "10", TypeError, r"^population_size must be an integer"),
        ("max_budget", 2.5, TypeError, r"^max_budget must be an integer"),
    ],
)
def test_search_arguments_name_the_wrong_argument_before_deriving_defaults(keyword, value, error, message):
    """Regression: wrong types used to surface as arithmetic errors inside the defaults derived from them
    ("'>' not supported between instances of 'int' and 'str'", "cannot convert float NaN to integer")."""
    with pytest.raises(error, match=message):
        SearchArguments(output_dir="unused", **{keyword: value})


def test_search_arguments_keep_numbers_json_plain():
    import json

    args = SearchArguments(
        output_dir="unused", target_budget=np.float64(96.0), sigma0=np.float32(0.5), seed=np.int64(3)
    )
    assert type(args.target_budget) is float and type(args.sigma0) is float and type(args.seed) is int
    assert (
        args.max_budget == 384
        and args.cache_score_lambda == SearchArguments(output_dir="unused").cache_score_lambda
    )
    json.dumps(args.to_dict())
    assert SearchArguments(output_dir="unused", target_budget=128).target_budget == 128
    assert type(SearchArguments(output_dir="unused", target_budget=128).target_budget) is int


@pytest.mark.parametrize("value", [0.5, 3, np.float64(2.0)])
def test_check_positive_number_accepts_finite_positive_numbers(value):
    from evolkv_hf._validation import check_positive_number

    assert check_positive_number("x", value) == value
    assert check_positive_number("x", 0, allow_zero=True) == 0

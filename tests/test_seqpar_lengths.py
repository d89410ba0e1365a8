"""seqpar/lengths.py: the lengths file format, its one-line errors, and the shipped distributions."""
import numpy as np
import pytest

from paraplan.errors import ParaplanError
from paraplan.seqpar.lengths import (distribution_source, list_distributions, parse_lengths, sample_batches,
                                     sample_lengths)


def test_parse_batches_and_comments():
    text = "# batch one\n100\n2000\n\n---\n30  # third\n---\n4e3\n"
    assert parse_lengths(text) == [[100, 2000], [30], [4000]]


@pytest.mark.parametrize("text, needle", [("100\nabc\n", "line 2: 'abc' is not a number"),
                                          ("100\n-5\n", "line 2: length must be a positive integer"),
                                          ("1.5\n", "line 1"), ("# nothing\n\n", "empty")])
def test_parse_errors(text, needle):
    with pytest.raises(ParaplanError, match=needle):
        parse_lengths(text)


def test_distributions_are_documented():
    assert list_distributions() == ["commoncrawl", "github", "wikipedia"]
    for name in list_distributions():
        assert len(distribution_source(name)) > 80
    assert "SYNTHETIC" in distribution_source("github")


def test_wikipedia_sample_matches_its_source():
    # [W] in shared/docs/reference/flexsp.md: median 347, mean 1,014, 78.8% <= 1K, 98.4% <= 8K
    x = np.array(sample_lengths("wikipedia", 200_000, 2_000_000, seed=0))
    assert np.median(x) == pytest.approx(347, rel=0.05)
    assert np.mean(x <= 1024) == pytest.approx(0.788, abs=0.01)
    assert np.mean(x <= 8192) == pytest.approx(0.984, abs=0.005)
    assert np.mean(x) == pytest.approx(1014, rel=0.25)


def test_sampling_is_deterministic_and_truncated():
    a = sample_batches("github", 2, 512, 192_000, seed=1)
    assert a == sample_batches("github", 2, 512, 192_000, seed=1)
    assert max(max(b) for b in a) <= 192_000
    with pytest.raises(ParaplanError, match="unknown length distribution 'books'"):
        sample_lengths("books", 10, 1000)

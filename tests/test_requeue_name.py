"""An input given back to the inbox under a name of the hub's (its own could not be written) is one the flow's
pattern still matches: otherwise it would wait there forever, never taken again."""

from __future__ import annotations

import fnmatch

import pytest

from spie_hub.run.recovery import _restorable


@pytest.mark.parametrize("pattern", ["*.xml", "*inscriptions*.csv", "caf_[0-9]*.csv", "RSA_??_*.xml", "[!.]*.json",
                                     "f[abc]?.csv"])
def test_a_requeued_input_gets_a_name_its_flows_pattern_matches(pattern: str) -> None:
    name = _restorable("é" * 150, pattern, "20261201T000000-abcd1234")  # too long for the hub to write back as is
    assert fnmatch.fnmatchcase(name, pattern), name

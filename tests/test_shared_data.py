"""The shared-data fixture: skipped with a reason on a bare machine, a failure in CI."""

import pytest


def test_missing_data_fails_in_ci(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("DETKIT_DATA", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"'BCCD' not found .* CI must have it"):
        shared_data("BCCD")


def test_missing_data_skips_elsewhere(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("DETKIT_DATA", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="'BCCD' not found"):
        shared_data("BCCD")


def test_present_data_is_returned(shared_data, monkeypatch, tmp_path):
    (tmp_path / "BCCD").mkdir()
    monkeypatch.setenv("DETKIT_DATA", str(tmp_path))
    assert shared_data("BCCD") == tmp_path / "BCCD"

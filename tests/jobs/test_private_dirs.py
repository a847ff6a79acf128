"""Removing the private data dirs of pruned jobs: direct children of the jobs dir only,
never following a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrify.jobs.runner import private_data_dir, remove_private_data_dirs


def test_private_data_dir_is_a_direct_child_of_the_jobs_dir(tmp_path: Path) -> None:
    assert private_data_dir(tmp_path, "a1b2c3") == tmp_path / "a1b2c3"
    for odd in ("", ".", "..", "../x", "a/b", "/etc", "a\0b"):
        with pytest.raises(ValueError):
            private_data_dir(tmp_path, odd)


def test_removes_the_named_job_dirs_and_nothing_else(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    for name in ("gone1", "gone2", "stays"):
        (jobs / name / "artifacts" / name).mkdir(parents=True)
        (jobs / name / "artifacts" / name / "stdout").write_text("ok\n")

    assert remove_private_data_dirs(jobs, ["gone1", "gone2", "never-had-a-dir"]) == 2

    assert sorted(p.name for p in jobs.iterdir()) == ["stays"]


def test_odd_ids_symlinks_and_files_are_left_alone(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    precious = tmp_path / "precious"
    (precious / "inside").mkdir(parents=True)
    (jobs / "linked").symlink_to(precious, target_is_directory=True)
    (jobs / "afile").write_text("not a dir\n")
    inner = jobs / "real"
    inner.mkdir()
    (inner / "escape").symlink_to(precious, target_is_directory=True)

    removed = remove_private_data_dirs(jobs, ["..", "../precious", "linked", "afile", "real"])

    assert removed == 1  # "real" only, and its symlink is unlinked, not followed
    assert (precious / "inside").is_dir()
    assert (jobs / "linked").is_symlink() and (jobs / "afile").is_file()
    assert not inner.exists()
    assert tmp_path.is_dir() and jobs.is_dir()

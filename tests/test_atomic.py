"""Exports and checkpoints are all or nothing: an interruption loses nothing and leaves nothing half-written."""

import pytest
import torch

import tinyae.models.student
from tinyae.errors import ExportError
from tinyae.models.student import Student
from tinyae.utils.atomic import atomic_file, atomic_folder


class Interrupted(Exception):
    pass


def _interrupt(*args, **kwargs):
    raise Interrupted("power cut while writing weights")


def test_an_interrupted_export_leaves_no_folder_and_no_temporary_files(tmp_path, small_student_config, monkeypatch):
    monkeypatch.setattr(tinyae.models.student, "save_file", _interrupt)
    with pytest.raises(Interrupted):
        Student(small_student_config).save_pretrained(tmp_path / "student")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_overwrite_keeps_the_previous_export(tmp_path, small_student_config, monkeypatch):
    first = Student(small_student_config)
    first.save_pretrained(tmp_path / "student")
    monkeypatch.setattr(tinyae.models.student, "save_file", _interrupt)
    with pytest.raises(Interrupted):
        Student(small_student_config).save_pretrained(tmp_path / "student", overwrite=True)
    monkeypatch.undo()
    kept = Student.from_pretrained(tmp_path / "student")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), kept.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_an_existing_folder_is_refused_unless_overwrite_is_asked(tmp_path, small_student_config):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        Student(small_student_config).save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "mine.txt").read_text() == "keep me"


def test_atomic_file_keeps_the_old_content_when_the_writer_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise Interrupted

    with pytest.raises(Interrupted):
        atomic_file(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_folders_are_readable_by_others(tmp_path):
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "out").stat().st_mode & 0o055 == 0o055  # not mkdtemp's private 0700

